import sys

from components.common.service import main

from .service import Walrus

sys.exit(main(Walrus))
