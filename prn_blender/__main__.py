"""`python -m prn_blender ...`: the `prn-blender` command line (inference/cli.py)."""

import sys

from .inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
