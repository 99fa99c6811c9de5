"""``python -m tikmix ...`` is the same as the ``tikmix`` console script."""

import sys

from tikmix.cli import main

sys.exit(main())
