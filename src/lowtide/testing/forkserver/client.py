"""The test process's side of the fork server: ``ForkServer`` starts it and asks it for
children; ``PreloadedChild`` is such a child, as a ``Popen``."""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import IO, Any

import orjson

from lowtide.testing.forkserver.server import MAX_MESSAGE

#: The modules a child may run (``python -m <module>``), each with what the server imports
#: before it forks the first such child: what the module's commands import when they start,
#: lazily or not. Imported on demand, not at the server's start: a script's fork server that
#: starts one child, or none, then costs no more than exec'ing it would.
_LOWTIDE = (
    "lowtide.cli.commands",
    "lowtide.cli.serve",
    "lowtide.cli.worker",
    "lowtide.cli.run",
    "lowtide.cli.client",
    "lowtide.server",
    "lowtide.api.serving",
    "uvicorn",
)
RUNNABLE: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "lowtide": _LOWTIDE,
        "lowtide.testing.upstream": ("lowtide.testing.upstream.cli",),
        "lowtide.testing.engine_sim": ("lowtide.testing.engine_sim.cli",),
        "lowtide.testing.batch_api": ("lowtide.testing.batch_api.cli",),
    }
)

_OPTIONS = frozenset({"stdin", "stdout", "stderr", "env", "cwd"})
# What the interpreter and the C library read from the environment when a process starts: a
# child whose values differ from the server's must start afresh.
_STARTUP_PREFIXES = ("PYTHON", "MALLOC_", "LD_", "GLIBC_", "LC_")
_STARTUP_EXEMPT = frozenset({"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"})
_STARTUP_NAMES = frozenset(
    {"LANG", "LANGUAGE", "COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"}
)


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
            cmd = [
                sys.executable,
                "-m",
                "lowtide.testing.forkserver",
                str(theirs.fileno()),
            ]
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
                "imports": RUNNABLE[cmd[2]],
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
                message = self._sock.recv(MAX_MESSAGE)
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
