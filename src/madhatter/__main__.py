"""``python -m madhatter`` is the ``madhatter`` command."""

import sys

from .cli import main

sys.exit(main())
