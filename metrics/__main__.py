"""``python -m metrics``: see :mod:`metrics.cli`."""

import sys

from metrics.cli import main

sys.exit(main())
