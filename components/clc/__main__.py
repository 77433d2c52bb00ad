import sys

from components.common.service import main

from .service import CloudController

sys.exit(main(CloudController))
