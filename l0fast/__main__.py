"""``python -m l0fast bench ...``: see :mod:`l0fast.cli`."""

import sys

from .cli import main

sys.exit(main())
