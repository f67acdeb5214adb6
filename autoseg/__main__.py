"""`python -m autoseg ...`: the `autoseg` command."""

import sys

from autoseg.cli import main

sys.exit(main())
