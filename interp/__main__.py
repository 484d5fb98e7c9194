"""`python -m interp ...`: the `interp` command, run by a chosen interpreter (e.g. a venv's python)."""

import sys

from interp.cli import main

sys.exit(main())
