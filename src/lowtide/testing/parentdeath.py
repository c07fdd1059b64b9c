"""A process that dies with its parent, whatever the cause of the parent's death
(``PR_SET_PDEATHSIG``): even a SIGKILLed parent, which runs no clean-up, takes it along."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """What ties the calling process's life to ``parent``'s, to call in the child just after a
    fork (a ``preexec_fn``); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in it

    def in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        # The parent may have died between fork and prctl, too early to signal us: then we
        # were handed to another process already, and must not start at all.
        if os.getppid() != parent:
            os._exit(1)

    return in_child
