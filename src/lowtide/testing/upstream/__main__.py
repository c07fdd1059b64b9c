"""``python -m lowtide.testing.upstream``: see ``lowtide.testing.upstream.cli``."""

import sys

from lowtide.testing.upstream.cli import main

sys.exit(main())
