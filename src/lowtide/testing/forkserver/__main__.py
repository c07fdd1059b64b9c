"""``python -m lowtide.testing.forkserver FD``: the fork server, started by
``ForkServer``."""

import sys

from lowtide.testing.forkserver.server import main

main(sys.argv[1:])
