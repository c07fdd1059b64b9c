"""``python -m lowtide.testing.batch_api``: the fake hosted Batch API as a process. It prints
one ``LISTENING http://127.0.0.1:<port>`` line once it listens, and runs until SIGINT or
SIGTERM, or until its parent process dies."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

import orjson

from lowtide.testing.batch_api.server import FakeBatchApi
from lowtide.testing.batch_api.state import BatchApiConfig
from lowtide.testing.upstream.process import LISTENING


async def _serve(config: BatchApiConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeBatchApi(config, host=host, port=port) as api:
        sys.stdout.write(f"{LISTENING}{api.url}\n")
        sys.stdout.flush()
        parent = os.getppid()
        while not stop.is_set():
            # A fake left behind by a killed test run would hold its port for ever.
            if os.getppid() != parent:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowtide.testing.batch_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config-json", default="{}", help="BatchApiConfig fields as JSON")
    args = parser.parse_args(argv)
    config = BatchApiConfig().updated(orjson.loads(args.config_json))
    asyncio.run(_serve(config, args.host, args.port))
    return 0
