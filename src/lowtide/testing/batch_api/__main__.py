"""``python -m lowtide.testing.batch_api``: see ``lowtide.testing.batch_api.cli``."""

from __future__ import annotations

import sys

from lowtide.testing.batch_api.cli import main

sys.exit(main())
