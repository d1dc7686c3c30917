"""python -m minirs.server: the same as `minirs serve` (see main.py)."""

import sys

from minirs.server.main import main

sys.exit(main())
