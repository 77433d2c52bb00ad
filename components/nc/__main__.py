import sys

from components.common.service import main

from .service import NodeController

sys.exit(main(NodeController))
