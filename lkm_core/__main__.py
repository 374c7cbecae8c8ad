"""``python -m lkm_core ...`` is the same as ``lkm-segment ...``."""

import sys

from .cli.root import main

if __name__ == "__main__":
    sys.exit(main())
