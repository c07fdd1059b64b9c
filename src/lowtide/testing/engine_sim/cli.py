"""``python -m lowtide.testing.engine_sim``: the simulated engine as a process.

It prints one ``LISTENING http://127.0.0.1:<port>`` line once it listens, then nothing, and
runs until SIGINT or SIGTERM (or until its parent process dies, unless --no-parent-watch)::

    python -m lowtide.testing.engine_sim --port 0 --max-seqs 32 --speed 10
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Final

import orjson

from lowtide.testing.engine_sim.config import (
    FROM_TEXT,
    EngineConfig,
    field_hints,
    require_loopback,
)
from lowtide.testing.engine_sim.server import SimEngine

LISTENING: Final = "LISTENING "  # the first line the process prints, before its url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lowtide.testing.engine_sim",
        description="A simulated continuous-batching inference engine answering like vLLM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-json", help="a JSON object of settings, before the flags")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument(
        "--no-parent-watch", action="store_true", help="keep running if the parent process dies"
    )
    defaults = EngineConfig()
    for f in dataclasses.fields(EngineConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar="VALUE",
            help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)})",
        )
    return parser


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    changes: dict[str, object] = {}
    if args.config_json:
        loaded = orjson.loads(args.config_json)
        if not isinstance(loaded, dict):
            raise ValueError("--config-json must be a JSON object")
        changes.update(loaded)
    for name, hint in field_hints().items():
        text = getattr(args, name)
        if text is not None:
            changes[name] = FROM_TEXT[hint](text)
    return EngineConfig().updated(changes)


async def _watch_parent(stop: asyncio.Event) -> None:
    # An engine left behind by a killed benchmark would hold its port and CPU forever.
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            stop.set()


async def _serve(config: EngineConfig, host: str, port: int, watch_parent: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimEngine(config, host=host, port=port) as engine:
        sys.stdout.write(f"{LISTENING}{engine.url}\n")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        require_loopback(args.host)
        config = config_from_args(args)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
        runner.run(_serve(config, args.host, args.port, not args.no_parent_watch))
    return 0
