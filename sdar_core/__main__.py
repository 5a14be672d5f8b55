"""`python -m sdar_core ...`: the generate command line (sdar_core/cli.py)."""

import sys

from .cli import main

sys.exit(main())
