"""``python -m backupkit`` is the ``backupkit`` command."""

import sys

from .cli import main

sys.exit(main())
