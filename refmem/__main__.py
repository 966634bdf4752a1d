"""``python -m refmem`` is the ``refmem`` command."""

import sys

from .cli import main

sys.exit(main())
