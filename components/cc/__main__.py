import sys

from components.common.service import main

from .service import ClusterController

sys.exit(main(ClusterController))
