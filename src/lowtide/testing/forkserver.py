"""A preloaded interpreter that starts the test suite's Python children by fork instead of exec.

An empty start and stop of ``python -m lowtide serve`` costs about a second of CPU on the
two-core machines the suite runs on, nearly all of it imports (FastAPI, pydantic, aiohttp), and a
run of the suite starts some two hundred such children. The fork server imports those modules
once; then, for each child, it forks, and the child sets its process up as ``subprocess.Popen``
would (a process group of its own, the standard streams, environment and working directory it
was given, the signal dispositions a fresh interpreter has) and runs its module as ``python -m``
does. The child is a real process: its pid, signals, SIGKILL, ports and exit status behave as an
exec'd interpreter's, and it dies with the fork server, which dies with its own parent.

Only a child that could not tell the difference is started this way (``ForkServer.takes``):
``python -m`` of a module the server preloaded, with no ``Popen`` option beyond the streams, the
environment and the working directory, and an environment that agrees with the server's on what
the interpreter and the C library read at start (``PYTHON*`` other than ``PYTHONUNBUFFERED``,
``MALLOC_*``, ``LD_*``, the locale, coverage's start-up). The suite's fork server runs without
coverage, so a child that coverage is to measure is exec'd as before; the server's own code and
what its children run before their module are not measured either (``# pragma: no cover``):
coverage's tracer would cost them the start-up they save.

The server does not reap a child until its client has seen it exit (``PreloadedChild.wait``), so
that the child's pid, and so its process group id, is not given to another process while the
client may still signal it: as with ``Popen``, whose pid is a zombie until ``wait``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import io
import os
import queue
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, NoReturn

import orjson

#: The modules a child may run (``python -m <module>``) and what the server imports for them:
#: what their commands import when they start, lazily or not.
RUNNABLE = frozenset(
    {
        "lowtide",
        "lowtide.testing.upstream",
        "lowtide.testing.engine_sim",
        "lowtide.testing.batch_api",
    }
)
PRELOAD = (
    "lowtide.cli.commands",
    "lowtide.cli.serve",
    "lowtide.cli.worker",
    "lowtide.cli.run",
    "lowtide.cli.client",
    "lowtide.server",
    "lowtide.api.serving",
    "uvicorn",
    "lowtide.testing.upstream.cli",
    "lowtide.testing.engine_sim.cli",
    "lowtide.testing.batch_api.cli",
)

_OPTIONS = frozenset({"stdin", "stdout", "stderr", "env", "cwd"})
# What the interpreter and the C library read from the environment when a process starts: a
# child whose values differ from the server's must start afresh.
_STARTUP_PREFIXES = ("PYTHON", "MALLOC_", "LD_", "GLIBC_", "LC_")
_STARTUP_EXEMPT = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})
_STARTUP_NAMES = frozenset(
    {"LANG", "LANGUAGE", "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"}
)
_MAX_MESSAGE = 1 << 20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _startup_environment(env: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in env.items()
        if (k.startswith(_STARTUP_PREFIXES) or k in _STARTUP_NAMES) and k not in _STARTUP_EXEMPT
    }


class ForkServer:
    """The client's side: starts the server (``start`` is how this process starts any child,
    e.g. ``lowtide.testing.children.spawn``), forks children through it, and learns their exits
    from it on a thread of its own."""

    def __init__(
        self, start: Callable[..., subprocess.Popen[bytes]], env: Mapping[str, str]
    ) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = dict(env)
        self._startup = _startup_environment(self.env)
        with theirs:
            cmd = [sys.executable, "-m", __name__, str(theirs.fileno()), *PRELOAD]
            self.proc = start(cmd, pass_fds=(theirs.fileno(),), env=self.env)
        self._sock = ours
        self._lock = threading.Lock()  # one request at a time: the replies come in order
        self._replies: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._exits: dict[int, int] = {}
        self._exited = threading.Condition()
        self._closed = False
        self._dead = False  # the server exited: its children with it
        threading.Thread(target=self._read, name="fork-server-reader", daemon=True).start()

    def takes(self, cmd: Sequence[str], options: Mapping[str, Any]) -> bool:
        """Whether ``Popen(cmd, **options)`` can be forked from this server unnoticed."""
        if self._closed or not set(options) <= _OPTIONS:
            return False
        if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m" or cmd[2] not in RUNNABLE:
            return False
        env = options.get("env")
        return _startup_environment(os.environ if env is None else env) == self._startup

    def spawn(self, cmd: Sequence[str], options: Mapping[str, Any]) -> PreloadedChild:
        """``Popen(cmd, **options)``, forked from the server (see ``takes``)."""
        streams = _Streams(options)
        try:
            request = {
                "module": cmd[2],
                "args": list(cmd[3:]),
                "env": dict(os.environ if options.get("env") is None else options["env"]),
                "cwd": os.fspath(options.get("cwd") or os.getcwd()),
            }
            with self._lock:
                socket.send_fds(self._sock, [orjson.dumps(request)], streams.child_fds())
                reply = self._replies.get()
        except BaseException:
            streams.close_parent_ends()
            raise
        finally:
            streams.close_child_ends()
        if "pid" not in reply:
            streams.close_parent_ends()
            raise OSError(f"the fork server could not start {cmd[2]}: {reply.get('error')}")
        return PreloadedChild(self, reply["pid"], list(cmd), streams)

    def exit_status(self, pid: int) -> int | None:
        with self._exited:
            return self._exits.get(pid, -signal.SIGKILL if self._dead else None)

    def wait_exit(self, pid: int, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._exited:
            while pid not in self._exits:
                if self._dead:
                    return -signal.SIGKILL
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._exited.wait(left)
            return self._exits[pid]

    def reap(self, pid: int) -> None:
        """Let the server reap ``pid``: nothing will signal it any more."""
        with self._exited:
            self._exits.pop(pid, None)
        with contextlib.suppress(OSError), self._lock:
            self._sock.send(orjson.dumps({"reap": pid}))

    def close(self) -> None:
        """Stop the server; a child still running dies with it (SIGKILL)."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10.0)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _read(self) -> None:
        while True:
            try:
                message = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                message = b""
            if not message:
                break
            reply = orjson.loads(message)
            if "exited" in reply:
                with self._exited:
                    self._exits[reply["exited"]] = reply["returncode"]
                    self._exited.notify_all()
            else:
                self._replies.put(reply)
        # The server is gone, and its children with it (SIGKILL): nothing more will be heard.
        self._closed = True
        self._replies.put({"error": "the fork server exited"})
        with self._exited:
            self._dead = True
            self._exited.notify_all()


class _Streams:
    """The standard streams ``Popen`` options ask for: the three ends handed to the child, and
    this process's ends of the pipes (``PIPE``)."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._opened: list[int] = []  # ends this object opened for the child
        self.parent: dict[str, IO[bytes] | None] = {"stdin": None, "stdout": None, "stderr": None}
        self._fds: list[int] = []
        for default, name in enumerate(self.parent):
            self._fds.append(self._child_end(name, options.get(name), default))

    def _child_end(self, name: str, option: Any, default: int) -> int:
        if option == subprocess.STDOUT:
            return self._fds[1]
        if option is None:
            return default
        if option == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
        elif option == subprocess.PIPE:
            read, write = os.pipe()
            fd, ours = (read, write) if name == "stdin" else (write, read)
            self.parent[name] = open(ours, "wb" if name == "stdin" else "rb")  # noqa: SIM115
        else:
            return option if isinstance(option, int) else int(option.fileno())
        self._opened.append(fd)
        return fd

    def child_fds(self) -> list[int]:
        return self._fds

    def close_child_ends(self) -> None:
        for fd in self._opened:
            os.close(fd)
        self._opened.clear()

    def close_parent_ends(self) -> None:
        for stream in self.parent.values():
            if stream is not None:
                stream.close()


class PreloadedChild(subprocess.Popen[bytes]):
    """A child forked by the fork server, with the ``Popen`` methods the tests use."""

    def __init__(self, server: ForkServer, pid: int, args: list[str], streams: _Streams) -> None:
        self.args = args
        self.pid = pid
        self.returncode: Any = None
        self.stdin = streams.parent["stdin"]
        self.stdout = streams.parent["stdout"]
        self.stderr = streams.parent["stderr"]
        self.text_mode = False
        self.universal_newlines = False
        self.encoding = self.errors = None
        self._child_created = False  # Popen.__del__ has nothing to reap
        self._server = server
        self._output: dict[int, list[bytes]] = {}

    def has_exited(self) -> bool:
        """Whether it has exited, without letting the server reap it."""
        return self.returncode is not None or self._server.exit_status(self.pid) is not None

    def poll(self) -> int | None:
        if self.returncode is None:
            status = self._server.exit_status(self.pid)
            if status is not None:
                self._reaped(status)
        return self.returncode  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = self._server.wait_exit(self.pid, timeout)
            if status is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._reaped(status)
        return self.returncode  # type: ignore[no-any-return]

    def _reaped(self, status: int) -> None:
        self.returncode = status
        self._server.reap(self.pid)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Read stdout and stderr (when piped) to their ends, then wait; no ``input``."""
        if input is not None:
            raise NotImplementedError("a preloaded child takes no input")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            self.stdin.close()
        pipes = [s for s in (self.stdout, self.stderr) if s is not None and not s.closed]
        with selectors.DefaultSelector() as selector:
            for pipe in pipes:
                selector.register(pipe, selectors.EVENT_READ)
                self._output.setdefault(pipe.fileno(), [])
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        self._output[key.fd].append(chunk)
                    else:
                        selector.unregister(key.fileobj)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        self.wait(left)
        out = self._collected(self.stdout)
        err = self._collected(self.stderr)
        return out, err

    def _collected(self, pipe: IO[bytes] | None) -> bytes | None:
        if pipe is None:
            return None
        data = b"".join(self._output.pop(pipe.fileno(), []))
        pipe.close()
        return data


# -- the server ------------------------------------------------------------------------------
# It runs in the fork server and in its children before their module starts: not measured (see
# the module's docstring).


def _serve(sock: socket.socket, modules: Iterable[str]) -> None:  # pragma: no cover
    signals = _signal_dispositions()  # a fresh interpreter's, before the server changes any
    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()  # what the imports made stays shared with the children, unwritten
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the select below
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    running: set[int] = set()
    server = os.getpid()
    server_fds = (sock.fileno(), wake_read, wake_write, selector.fileno())
    while True:
        for key, _ in selector.select():
            if key.fd == wake_read:
                os.read(wake_read, 4096)
                continue
            message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 3)
            if not message:
                return  # the client is gone: the children die with this process
            request = orjson.loads(message)
            if "reap" in request:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(request["reap"], 0)
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                sock.send(orjson.dumps({"error": str(exc)}))
                continue
            finally:
                if os.getpid() == server:
                    for fd in fds:
                        os.close(fd)
            if pid == 0:
                _child(request, fds, signals, server_fds)
            running.add(pid)
            sock.send(orjson.dumps({"pid": pid}))
        for pid in _exited(running):
            running.discard(pid)
            sock.send(orjson.dumps({"exited": pid, "returncode": _status(pid)}))


def _exited(running: Iterable[int]) -> list[int]:  # pragma: no cover
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return [pid for pid in running if os.waitid(os.P_PID, pid, flags) is not None]


def _status(pid: int) -> int:  # pragma: no cover
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    assert info is not None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


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
    server = os.getppid()
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != server:  # the server died before prctl
            os._exit(1)
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
    sock = socket.socket(fileno=int(argv[0]))
    try:
        _serve(sock, argv[1:])
    finally:
        sock.close()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
