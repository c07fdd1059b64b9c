"""``python -m lowtide.testing.engine_sim``: see ``lowtide.testing.engine_sim.cli``."""

import sys

from lowtide.testing.engine_sim.cli import main

sys.exit(main())
