"""`python -m deepgen_core ...` is the `deepgen` command (for environments without the console script on PATH)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
