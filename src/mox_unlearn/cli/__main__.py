"""`python -m mox_unlearn.cli` = `mox`."""

import sys

from mox_unlearn.cli import main

sys.exit(main())
