"""The ``lowtide`` command line.

``main`` is the entry point. It imports the commands itself, inside its guard, so that Ctrl-C
ends any command with ``EXIT_INTERRUPTED`` however early it comes: while the commands are
imported (half a second, several on a busy machine), while one runs, or while it waits for a
server. Click's own answer to Ctrl-C is "Aborted!" and 1, which a script cannot tell from an
error.
"""

from __future__ import annotations

import sys
from typing import Final

#: Ctrl-C: the shell's convention, 128 + SIGINT.
EXIT_INTERRUPTED: Final = 130


def main() -> None:
    try:
        from lowtide.cli.main import cli

        cli(prog_name="lowtide")
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # close the terminal's ^C echo
        sys.exit(EXIT_INTERRUPTED)
