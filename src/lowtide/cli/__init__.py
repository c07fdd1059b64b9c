"""The ``lowtide`` command line.

``main`` is the entry point. Ctrl-C ends any command with ``EXIT_INTERRUPTED`` however early it
comes: while the commands are imported (half a second, several on a busy machine), while one
runs, or while it waits for a server. Click's own answer to Ctrl-C is "Aborted!" and 1, which a
script cannot tell from an error.

A ``KeyboardInterrupt`` does not always reach the code that would end the command. Raised inside
a weak-reference callback or a ``__del__`` (the import machinery has some), Python drops it,
prints "Exception ignored in ..." with a traceback, and the command would go on, maybe to wait for
ever: ``main`` hooks ``sys.unraisablehook`` to take such an interrupt quietly and send it again.
Raised inside an extension's code it may come back wrapped in another exception. So the handler
also remembers the interrupt, and arms a watchdog that ends the process with the same code if it
has not ended within ``_GRACE`` seconds: what a command does on Ctrl-C (a hint, a tidy progress
bar) has that long.
Commands that handle signals themselves (``serve``, ``worker``, ``run``) put their own handlers
in place and are not concerned.
"""

from __future__ import annotations

# Ctrl-C while these load (compiled afresh on a first run) comes before main() can install its
# handler: end the same way as after it, quietly with 130 (the number EXIT_INTERRUPTED names).
try:
    import _thread
    import os
    import signal
    import sys
    import threading
    import time
    from types import FrameType
    from typing import Final
except KeyboardInterrupt:
    raise SystemExit(130) from None

#: Ctrl-C: the shell's convention, 128 + SIGINT.
EXIT_INTERRUPTED: Final = 130
_GRACE: Final = 5.0

_interrupted = threading.Event()


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    if not _interrupted.is_set():
        _interrupted.set()
        watchdog = threading.Timer(_GRACE, os._exit, args=(EXIT_INTERRUPTED,))
        watchdog.daemon = True
        watchdog.start()
    raise KeyboardInterrupt


def _redeliver_dropped_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        if not sys.is_finalizing():  # ending anyway, and no new thread may start
            _thread.start_new_thread(_interrupt_main_soon, ())
    else:
        sys.__unraisablehook__(unraisable)


def _interrupt_main_soon() -> None:
    # From another thread, a moment later: the main thread has left the callback by then. Were
    # the interrupt dropped again, the hook would send it once more. A real signal to the main
    # thread, since only that wakes it from a blocking read (_thread.interrupt_main would not).
    time.sleep(0.01)
    main_thread = threading.main_thread().ident
    if main_thread is not None:
        signal.pthread_kill(main_thread, signal.SIGINT)


def main() -> None:
    sys.unraisablehook = _redeliver_dropped_interrupt
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        from lowtide.cli.commands import cli

        cli(prog_name="lowtide")
    except KeyboardInterrupt:
        _interrupted_exit()
    except SystemExit as exc:
        # Click answers a Ctrl-C outside a command's run (while --help loads the commands to
        # list them) with "Aborted!" and 1 itself.
        if _interrupted.is_set() and exc.code != EXIT_INTERRUPTED:
            _interrupted_exit()
        raise
    except BaseException:
        if _interrupted.is_set():  # the interrupt came back wrapped in another exception
            _interrupted_exit()
        raise


def _interrupted_exit() -> None:
    sys.stderr.write("\n")  # close the terminal's ^C echo
    sys.exit(EXIT_INTERRUPTED)
