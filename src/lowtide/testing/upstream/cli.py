"""``python -m lowtide.testing.upstream``: the fake upstream as a process.

It prints one ``LISTENING http://127.0.0.1:<port>`` line once it listens, then nothing, and
runs until SIGINT or SIGTERM (or until its parent process dies, unless --no-parent-watch)::

    python -m lowtide.testing.upstream --port 0 --rate-429 0.1 --retry-after 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence

import orjson

from lowtide.testing.upstream.config import (
    FROM_TEXT,
    UpstreamConfig,
    field_hints,
    require_loopback,
)
from lowtide.testing.upstream.process import LISTENING
from lowtide.testing.upstream.server import FakeUpstream


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lowtide.testing.upstream",
        description="A fake OpenAI-compatible model server with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-json", help="a JSON object of config fields, before the flags")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument(
        "--no-parent-watch", action="store_true", help="keep running if the parent process dies"
    )
    defaults = UpstreamConfig()
    for f in dataclasses.fields(UpstreamConfig):
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar="VALUE",
            help=f"{f.metadata['help']} (default: {shown})",
        )
    return parser


def _config_from_args(args: argparse.Namespace) -> UpstreamConfig:
    changes: dict[str, object] = {}
    if args.config_json:
        loaded = orjson.loads(args.config_json)
        if not isinstance(loaded, dict):
            raise ValueError("--config-json must be a JSON object")
        changes.update(loaded)
    hints = field_hints()
    for name, hint in hints.items():
        text = getattr(args, name)
        if text is not None:
            changes[name] = FROM_TEXT[hint](text)
    return UpstreamConfig().updated(changes)


async def _watch_parent(stop: asyncio.Event) -> None:
    # A fake server left behind by a crashed test run would hold its port and CPU forever.
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            stop.set()


async def _serve_forever(config: UpstreamConfig, host: str, port: int, watch_parent: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream(config, host=host, port=port) as upstream:
        sys.stdout.write(f"{LISTENING}{upstream.url}\n")
        sys.stdout.flush()
        watcher = asyncio.create_task(_watch_parent(stop)) if watch_parent else None
        await stop.wait()
        if watcher is not None:
            watcher.cancel()


def _loop_factory(no_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if no_uvloop:
        return None
    try:
        import uvloop  # optional: it comes with uvicorn[standard]
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        require_loopback(args.host)
        config = _config_from_args(args)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
        runner.run(_serve_forever(config, args.host, args.port, not args.no_parent_watch))
    return 0
