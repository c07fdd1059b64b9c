"""An interpreter that starts the test suite's Python children by fork instead of exec.

An empty start and stop of ``python -m lowtide serve`` costs about a second of CPU on the two-core
machines the suite runs on, nearly all of it imports (FastAPI, pydantic, aiohttp), and a run of the
suite starts some two hundred such children. The fork server imports those modules once, when it is
first asked for a child that needs them; then, for each child, it forks, and the child sets its
process up as ``subprocess.Popen`` would (a process group of its own, the standard streams,
environment and working directory it was given, the signal dispositions a fresh interpreter has)
and runs its module as ``python -m`` does. The child is a real process: its pid, signals, SIGKILL,
ports and exit status behave as an exec'd interpreter's, and it dies with the fork server, which
dies with its own parent.

Only a child that could not tell the difference is started this way (``ForkServer.takes``):
``python -m`` of a module the server knows (``RUNNABLE``), with no ``Popen`` option beyond the
streams, the environment and the working directory, and an environment that agrees with the
server's on what the interpreter and the C library read at start (``PYTHON*`` other than
``PYTHONUNBUFFERED``, ``MALLOC_*``, ``LD_*``, the locale, coverage's start-up). The suite's fork
server runs without coverage, so a child that coverage is to measure is exec'd as before; the
server's own code and what its children run before their module are not measured either
(``# pragma: no cover``): coverage's tracer would cost them the start-up they save.

The server does not reap a child until its client has seen it exit (``PreloadedChild.wait``), so
that the child's pid, and so its process group id, is not given to another process while the
client may still signal it: as with ``Popen``, whose pid is a zombie until ``wait``.
"""

from lowtide.testing.forkserver.client import RUNNABLE, ForkServer, PreloadedChild

__all__ = ["RUNNABLE", "ForkServer", "PreloadedChild"]
