"""The fork server itself: forks a child per request, having imported what its module needs,
and reports its exit.

It runs in a process of its own, and its children run part of it before their module starts:
coverage measures neither (it would cost them the start-up they save), so its functions carry
``# pragma: no cover``. See the package's docstring for what a child gets.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Iterable, Sequence
from typing import IO, Any, NoReturn

import orjson

from lowtide.testing.parentdeath import die_with_parent

MAX_MESSAGE = 1 << 20


def _serve(sock: socket.socket) -> None:  # pragma: no cover
    signals = _signal_dispositions()  # a fresh interpreter's, before the server changes any
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    running: set[int] = set()
    server_fds = (sock.fileno(), wake_read, wake_write, selector.fileno())
    while True:
        for key, _ in selector.select():
            if key.fd == wake_read:
                os.read(wake_read, 4096)
                continue
            message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
            if not message:
                return  # the client is gone: the children die with this process
            request = orjson.loads(message)
            if "reap" in request:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(request["reap"], 0)
                continue
            reply = _start(request, fds, signals, server_fds)
            if "pid" in reply:
                running.add(reply["pid"])
            sock.send(orjson.dumps(reply))
        for pid, returncode in _exited(running).items():
            running.discard(pid)
            sock.send(orjson.dumps({"exited": pid, "returncode": returncode}))


def _start(
    request: dict[str, Any], fds: list[int], signals: dict[int, Any], server_fds: Sequence[int]
) -> dict[str, Any]:  # pragma: no cover
    """Fork the child ``request`` asks for, having imported what it needs: the reply."""
    failure = _import(request["imports"])
    if failure is not None:
        for fd in fds:
            os.close(fd)
        return {"error": failure}
    pid = _fork(request, fds, signals, server_fds)
    return {"error": "fork failed"} if pid is None else {"pid": pid}


def _import(modules: Iterable[str]) -> str | None:  # pragma: no cover
    """Import what a child's module needs, once: the children forked after share it. Why not,
    if an import failed (the server, and the children it runs, carry on)."""
    missing = [module for module in modules if module not in sys.modules]
    if not missing:
        return None
    try:
        for module in missing:
            importlib.import_module(module)
    except Exception:
        return traceback.format_exc()
    gc.collect()
    gc.freeze()  # what the imports made stays shared with the children, unwritten
    return None


def _fork(
    request: dict[str, Any], fds: list[int], signals: dict[int, Any], server_fds: Sequence[int]
) -> int | None:  # pragma: no cover
    """Fork the child ``request`` asks for; its pid (None if the fork failed). The child's
    ends of its streams are closed here: the child has its copies."""
    try:
        pid = os.fork()
    except OSError:
        pid = None
    if pid == 0:
        _child(request, fds, signals, server_fds)
    for fd in fds:
        os.close(fd)
    return pid


def _exited(running: Iterable[int]) -> dict[int, int]:  # pragma: no cover
    """The children of ``running`` that have exited, with their statuses as ``Popen`` gives
    them; not reaped (see the package's docstring)."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    found = {}
    for pid in running:
        info = os.waitid(os.P_PID, pid, flags)
        if info is not None:
            exited = info.si_code == os.CLD_EXITED
            found[pid] = info.si_status if exited else -info.si_status
    return found


def _signal_dispositions() -> dict[int, Any]:  # pragma: no cover
    found: dict[int, Any] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            handler = signal.getsignal(sig)
            if handler is not None:
                found[sig] = handler
    return found


def _child(
    request: dict[str, Any], fds: list[int], signals: dict[int, Any], server_fds: Sequence[int]
) -> NoReturn:  # pragma: no cover
    code = 1
    try:
        _become_child(request, fds, signals, server_fds)
        code = _run_module(request["module"], request["args"])
    except BaseException:  # the set-up failed: as a child whose exec failed, status 1
        traceback.print_exc()
    finally:
        _flush_std_streams()
        os._exit(code)


def _become_child(
    request: dict[str, Any], fds: list[int], signals: dict[int, Any], server_fds: Sequence[int]
) -> None:  # pragma: no cover
    os.setpgid(0, 0)
    tie = die_with_parent(os.getppid())
    if tie is not None:
        tie()
    signal.set_wakeup_fd(-1)
    for fd in server_fds:
        os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds) - {0, 1, 2}:
        os.close(fd)
    for sig, handler in signals.items():
        signal.signal(sig, handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # as ``python -m`` puts it
    _reopen_std_streams(unbuffered=bool(os.environ.get("PYTHONUNBUFFERED")))


_replaced_streams: list[IO[str]] = []  # kept: collected, they would close fds 0, 1 and 2


def _reopen_std_streams(*, unbuffered: bool) -> None:  # pragma: no cover
    """New ``sys.stdin``/``stdout``/``stderr`` on fds 0-2, buffered as a fresh interpreter's
    would be for what they now are (a pipe, a file, a terminal)."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, name)
        _replaced_streams.append(old)
        writes = fd > 0
        mode, buffering = ("wb", 0 if unbuffered else -1) if writes else ("rb", -1)
        raw = open(fd, mode, buffering=buffering, closefd=False)  # noqa: SIM115
        stream = io.TextIOWrapper(
            raw,
            encoding=old.encoding,
            errors=old.errors,
            line_buffering=writes and (fd == 2 or os.isatty(fd)),
            write_through=unbuffered and writes,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_module(module: str, args: list[str]) -> int:  # pragma: no cover
    """``python -m module args...`` from here on: its exit status."""
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        _shut_down()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # as Python ends on an uncaught Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    _shut_down()
    return code


def _exit_code(code: object) -> int:  # pragma: no cover
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _shut_down() -> None:  # pragma: no cover
    """What the interpreter does on its way out: wait for non-daemon threads, run atexit."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()


def _flush_std_streams() -> None:  # pragma: no cover
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def main(argv: Sequence[str]) -> None:  # pragma: no cover
    """Serve on the socket whose fd is ``argv[0]``."""
    sock = socket.socket(fileno=int(argv[0]))
    try:
        _serve(sock)
    finally:
        sock.close()
