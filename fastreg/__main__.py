import sys

from fastreg.cli import main

sys.exit(main())
