"""``python -m metrics``: see :mod:`metrics.cli` (scoring in :mod:`metrics.scoring`)."""

import sys

from metrics.cli import main

sys.exit(main())
