import sys

from cir_core.cli import main

sys.exit(main())
