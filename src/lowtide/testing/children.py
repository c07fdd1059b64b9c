"""Child processes that never outlive the test run, benchmark or script that started them.

A child left behind by a killed test run or benchmark holds its port, its files and CPU on a
shared machine. ``spawn`` starts every child with two guards:

- the kernel kills it when its parent dies, whatever the cause (PR_SET_PDEATHSIG): this holds
  even when the parent is SIGKILLed and runs no clean-up. Only the parent's death counts: the
  chaos script's own SIGKILLs of a child and its restarts are untouched;
- it leads a process group of its own, so that ``end`` reaches whatever it started in turn, and
  a Ctrl-C at the terminal reaches the script alone, which then ends its children in order
  rather than each of them reacting to the SIGINT on its own.

A script wraps its main in ``ending_children()``: however it ends (it returns, raises, gets a
Ctrl-C, SIGTERM or SIGHUP), every child it started through ``spawn`` that still runs is ended
with its group before the script exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, TypeAlias

from lowtide.testing.forkserver import ForkServer, PreloadedChild
from lowtide.testing.parentdeath import die_with_parent

logger = logging.getLogger(__name__)

# How often a wait for a child's exit looks again; the child's exit itself is not signalled to
# a thread that does not reap it.
_POLL_S = 0.02
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


_Job: TypeAlias = tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]
_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_lock = threading.Lock()
_children: list[subprocess.Popen[bytes]] = []  # every child spawned and not yet seen to exit
_closing = False  # set by ending_children on the way out: no new children after that
_fork_server: ForkServer | None = None
_fork_server_lock = threading.Lock()


def _run_spawner() -> None:
    while True:
        start, result = _jobs.get()
        try:
            result.set_result(start())
        except BaseException as exc:  # handed to the caller, who raises it
            result.set_exception(exc)


#: Set to 1 in the environment (as the test suite does, for its own processes and the scripts it
#: runs), it makes ``spawn`` start the children that can be (``ForkServer.takes``) by forking them
#: from a preloaded interpreter (``lowtide.testing.forkserver``): about a second of CPU less for
#: each ``python -m lowtide``. The server starts with the first such child.
FORK_SERVER = "LOWTIDE_TESTING_FORK_SERVER"

#: What starts coverage in a child (``[tool.coverage.run] patch = ["subprocess"]``).
COVERAGE_START = frozenset({"COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"})


def unmeasured_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (or this process's) without coverage's start-up, for a child that is never
    measured, even by a test whose other children are (the test suite measures children only
    in tests marked ``measure_children``):

    - one that runs no code of lowtide (schemathesis, moto's S3 server): coverage's tracer
      still sees every call it makes, and doubles the CPU of its start;
    - the fake upstream as a process (``harness.Upstream``, about fifty in a run of the
      suite): its code is measured where it runs in-process (tests/unit, tests/inprocess);
    - the benchmark and chaos scripts: their servers run code that other tests measure, and
      under coverage's tracer they cost a tenth of the suite's time (pytest took 499 s with
      them measured, 438 s without, coverage 93.7% and 93.5%, on a 2-core machine)."""
    return {
        k: v for k, v in (os.environ if env is None else env).items() if k not in COVERAGE_START
    }


def close_fork_server() -> list[tuple[int, str]]:
    """Stop the fork server, if one runs; its children still alive before that, as
    ``live_children_of`` gives them (they die with it)."""
    global _fork_server
    with _fork_server_lock:
        server, _fork_server = _fork_server, None
    if server is None:
        return []
    left = live_children_of(server.proc.pid)
    server.close()
    return left


def live_children_of(pid: int) -> list[tuple[int, str]]:
    """Live (not zombie) child processes of ``pid``, with their command lines (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
            if int(ppid) != pid or state == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError):
            continue  # it ended while we looked
        found.append((int(entry.name), cmdline))
    return found


def _the_fork_server() -> ForkServer | None:
    global _fork_server
    if os.environ.get(FORK_SERVER) != "1":
        return None
    with _fork_server_lock:  # not _lock: starting the server takes it
        if _fork_server is None and not _closing:
            _fork_server = ForkServer(_popen, unmeasured_env())
        return _fork_server


def spawn(cmd: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **options)`` for a child that dies when this process dies, forked
    from the fork server where it can be (``FORK_SERVER``).

    The child's stdin is /dev/null unless given: in a process group of its own it is not in
    the terminal's foreground, and reading the terminal would stop it.
    """
    with _lock:
        if _closing:
            raise RuntimeError("this process is ending its children: no new child is started")
    options.setdefault("stdin", subprocess.DEVNULL)
    server = _the_fork_server()
    if server is not None and server.takes(cmd, options):
        proc: subprocess.Popen[bytes] = server.spawn(cmd, options)
    else:
        proc = _popen(cmd, **options)
    with _lock:
        _children[:] = [p for p in _children if p.returncode is None]
        _children.append(proc)
    return proc


def _popen(cmd: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(cmd, **options)`` for a child that dies when this process dies.

    The kernel's "parent" is the thread that forked the child, not the process: a child
    forked by a short-lived thread (a pool's, a test's) would be killed as that thread ends.
    So every child is forked by one daemon thread that lasts as long as the process does.
    """
    global _spawner
    with _lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_run_spawner, name="harness-spawner", daemon=True)
            _spawner.start()
    preexec = die_with_parent(os.getpid())
    result: Future[subprocess.Popen[bytes]] = Future()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(cmd), preexec_fn=preexec, process_group=0, **options)

    _jobs.put((start, result))
    return result.result()


def run(
    cmd: Sequence[str],
    *,
    check: bool = False,
    capture_output: bool = False,
    timeout: float | None = None,
    **options: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` for a child started by ``spawn``: if the wait for it is cut short
    (Ctrl-C, an exception, ``timeout``), the child is ended with its process group."""
    if capture_output:
        options.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = spawn(cmd, **options)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        end(proc)
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    # Only while the child is not reaped: until then its pid, and so its group id, cannot be
    # given to another process. A child not started by spawn may lead no group: then only it.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)


def _has_exited(proc: subprocess.Popen[Any]) -> bool:
    """Whether the child has exited, without reaping it (so its group id stays its own)."""
    if proc.returncode is not None:
        return True
    if isinstance(proc, PreloadedChild):
        return proc.has_exited()
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    except ChildProcessError:  # reaped meanwhile by another thread's wait()
        return True


def _wait_exited(procs: Sequence[subprocess.Popen[Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_has_exited(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(_POLL_S)


def end(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """End ``proc`` and its whole process group: SIGTERM, ``timeout`` s to exit, then SIGKILL.

    The group is SIGKILLed after its leader has exited too, so that nothing it started lingers.
    Returns the child's exit status.
    """
    end_all_of([proc], timeout)
    return proc.wait()


def end_all_of(procs: Sequence[subprocess.Popen[Any]], timeout: float) -> None:
    """``end`` for many children at once: they get the same ``timeout``, not one each."""
    live = [p for p in procs if p.returncode is None]
    for proc in live:
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)  # a paused (SIGSTOPped) child cannot act on it
    _wait_exited(live, timeout)
    for proc in live:
        if not _has_exited(proc):
            logger.warning("child %d did not exit %gs after SIGTERM: killed", proc.pid, timeout)
        _signal_group(proc, signal.SIGKILL)
    for proc in live:
        proc.wait()


def end_all(timeout: float = 10.0) -> None:
    """End every child ``spawn`` started that still runs, each with its process group."""
    with _lock:
        children = list(_children)
    end_all_of(children, timeout)


def read_ready_line(
    proc: subprocess.Popen[bytes], prefix: str, timeout: float, *, what: str = "the child"
) -> str:
    """Wait for the line starting with ``prefix`` a child prints on its stdout when it is ready,
    and return the rest of it (stripped); earlier lines are skipped.

    Raises RuntimeError if the child closes its stdout (exits) first, TimeoutError if the line
    does not come within ``timeout`` seconds.
    """
    stdout = proc.stdout
    assert stdout is not None, "start the child with stdout=subprocess.PIPE"
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            line = stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"{what} exited with status {proc.wait()}")
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
    raise TimeoutError(f"{what} did not start within {timeout:g}s")


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    # SIGTERM's and SIGHUP's default is to die at once, running no `finally`: turn them into
    # SystemExit so that the script unwinds and ends its children on the way out.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def ending_children(timeout: float = 10.0) -> Iterator[None]:
    """Wrap a script's main so that no child ``spawn`` started outlives it.

    Inside, SIGTERM and SIGHUP raise SystemExit (in the main thread), as Ctrl-C raises
    KeyboardInterrupt. On the way out, however it goes, every child still running is ended
    with its group (``end``); no new child can be started after that. While they are being
    ended (``timeout`` at most, then SIGKILL), another Ctrl-C or SIGTERM is ignored, so that it
    cannot cut the clean-up short.
    """
    global _closing
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _raise_exit) for s in _EXIT_SIGNALS} if main_thread else {}
    try:
        yield
    finally:
        if main_thread:
            for s in (*_EXIT_SIGNALS, signal.SIGINT):
                replaced = signal.signal(s, signal.SIG_IGN)
                previous.setdefault(s, replaced)
        with _lock:
            _closing = True
        try:
            end_all(timeout)
            close_fork_server()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
