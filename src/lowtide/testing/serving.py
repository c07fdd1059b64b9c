"""What the fake servers (``upstream``, ``engine_sim``, ``batch_api``) share: serving on
loopback, the ``python -m`` run loop and its flags, the child process that waits for the
``LISTENING <url>`` line, and the config coercion of their JSON and flags.

Each server keeps its own routes, config and messages; only the plumbing lives here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Protocol, Self, TypeVar

import orjson
from aiohttp import web

from lowtide.testing.children import end, read_ready_line, spawn

#: The first line a fake server's process prints, before the url it listens on.
LISTENING: Final = "LISTENING "
#: aiohttp's own listen backlog, for a server that does not ask for more.
DEFAULT_BACKLOG: Final = 128

C = TypeVar("C")
D = TypeVar("D")


# -- config ------------------------------------------------------------------------------------


def require_loopback(host: str, refusal: str) -> None:
    """A fake server is a test tool: it never listens beyond this machine.

    ``refusal`` begins the error's message, e.g. ``"the fake upstream only listens on loopback"``.
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{refusal}, not {host!r}")


def to_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def to_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def replaced(
    config: D,
    changes: Mapping[str, object],
    coercers: Mapping[object, Callable[[object], object]],
    hints: Mapping[str, object],
    unknown: str,
) -> D:
    """A copy of the dataclass ``config`` with ``changes`` (JSON-typed values) applied, each
    coerced by its field's type; ValueError (``unknown`` + the name, for a name it lacks) if
    any is bad. The dataclass's ``__post_init__`` validates the result."""
    coerced: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in hints:
            raise ValueError(f"{unknown} {name!r}")
        try:
            coerced[name] = coercers[hints[name]](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
    return dataclasses.replace(config, **coerced)  # type: ignore[type-var]


# -- the HTTP side -------------------------------------------------------------------------------


async def listen(runner: web.BaseRunner, host: str, port: int, backlog: int) -> int:
    """Set ``runner`` up and listen on ``host:port`` (0: a free port); the port it got."""
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=backlog)
    await site.start()
    return int(runner.addresses[0][1])


class Served:
    """``async with`` for a server that has ``start``, ``close`` and ``url``."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    async def start(self) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- ``python -m``: the run loop -----------------------------------------------------------------


def server_parser(prog: str, description: str, config_json_help: str) -> argparse.ArgumentParser:
    """The flags every fake server's command line takes, before its config's own."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-json", help=config_json_help)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument(
        "--no-parent-watch", action="store_true", help="keep running if the parent process dies"
    )
    return parser


def add_config_flags(
    parser: argparse.ArgumentParser, defaults: Any, shown: Callable[[object], object] = str
) -> None:
    """One ``--the-field VALUE`` flag per field of the config dataclass ``defaults``, its help
    the field's ``help`` metadata and its default as ``shown`` writes it."""
    for f in dataclasses.fields(defaults):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar="VALUE",
            help=f"{f.metadata['help']} (default: {shown(getattr(defaults, f.name))})",
        )


def changes_from_args(
    args: argparse.Namespace,
    hints: Mapping[str, object],
    from_text: Mapping[object, Callable[[str], object]],
) -> dict[str, object]:
    """The config changes of a command line: ``--config-json`` first, then the flags."""
    changes: dict[str, object] = {}
    if args.config_json:
        loaded = orjson.loads(args.config_json)
        if not isinstance(loaded, dict):
            raise ValueError("--config-json must be a JSON object")
        changes.update(loaded)
    for name, hint in hints.items():
        text = getattr(args, name)
        if text is not None:
            changes[name] = from_text[hint](text)
    return changes


class Startable(Protocol):
    async def start(self) -> str: ...

    async def close(self) -> None: ...


async def _watch_parent(stop: asyncio.Event) -> None:
    # A fake server left behind by a killed test run or benchmark would hold its port and CPU
    # forever.
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            stop.set()


async def serve(make: Callable[[], Startable], watch_parent: bool) -> None:
    """Start the server ``make`` builds, print its ``LISTENING <url>`` line, and serve until
    SIGINT or SIGTERM (or until the parent process dies, with ``watch_parent``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = make()
    url = await server.start()
    try:
        sys.stdout.write(f"{LISTENING}{url}\n")
        sys.stdout.flush()
        watcher = asyncio.create_task(_watch_parent(stop)) if watch_parent else None
        await stop.wait()
        if watcher is not None:
            watcher.cancel()
    finally:
        await server.close()


def _loop_factory(no_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if no_uvloop:
        return None
    try:
        import uvloop  # optional: it comes with uvicorn[standard]
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_server(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    config_of: Callable[[argparse.Namespace], C],
    server_of: Callable[[C, str, int], Startable],
) -> int:
    """The ``main`` of a fake server: parse (a bad flag or config is the parser's error), then
    serve until stopped (``serve``)."""
    args = parser.parse_args(argv)
    try:
        config = config_of(args)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    host, port = args.host, args.port
    with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
        runner.run(serve(lambda: server_of(config, host, port), not args.no_parent_watch))
    return 0


# -- the server as a child process ----------------------------------------------------------------


class ServerProcess:
    """A fake server's ``python -m`` in a child process, so that it has its own CPU as a real
    server has: ``start`` waits for its ``LISTENING <url>`` line, ``stop`` ends it with its
    process group. The child dies with this process (``lowtide.testing.children.spawn``).

    Its stderr goes to ``log`` (appended) when given, else to /dev/null, or with
    ``inherit_stderr`` to this process's stderr.
    """

    what = "the fake server"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        startup_timeout: float,
        log: Path | None = None,
        inherit_stderr: bool = False,
    ) -> None:
        self._argv = list(argv)
        self._timeout = startup_timeout
        self._log = log
        self._inherit_stderr = inherit_stderr
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.what} is not running")
        return self.proc.pid

    def start(self) -> str:
        self.proc = self._spawn()
        try:
            self.url = read_ready_line(self.proc, LISTENING, self._timeout, what=self.what)
            self.url = self.url.rstrip("/")
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn(self) -> subprocess.Popen[bytes]:
        if self._inherit_stderr:
            return spawn(self._argv, stdout=subprocess.PIPE)
        stderr: IO[bytes] | int = self._log.open("ab") if self._log else subprocess.DEVNULL
        try:
            return spawn(self._argv, stdout=subprocess.PIPE, stderr=stderr)
        finally:
            if not isinstance(stderr, int):
                stderr.close()  # the child has its own copy

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM its process group, SIGKILL it after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        end(proc, timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
