"""``python -m lowtide.testing.forkserver FD MODULE...``: the fork server, started by
``ForkServer``."""

import sys

from lowtide.testing.forkserver.server import main

main(sys.argv[1:])
