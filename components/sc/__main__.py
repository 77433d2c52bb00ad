import sys

from components.common.service import main

from .service import StorageController

sys.exit(main(StorageController))
