"""Command-line entry point: `python cli.py --help` (the same as the installed `minirs` command)."""

import sys

from minirs.cli import main

if __name__ == "__main__":
    sys.exit(main())
