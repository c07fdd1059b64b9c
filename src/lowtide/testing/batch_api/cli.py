"""``python -m lowtide.testing.batch_api``: the fake hosted Batch API as a process. It prints
one ``LISTENING http://127.0.0.1:<port>`` line once it listens, and runs until SIGINT or
SIGTERM, or until its parent process dies."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import orjson

from lowtide.testing import serving
from lowtide.testing.batch_api.server import FakeBatchApi
from lowtide.testing.batch_api.state import BatchApiConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lowtide.testing.batch_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config-json", default="{}", help="BatchApiConfig fields as JSON")
    args = parser.parse_args(argv)
    config = BatchApiConfig().updated(orjson.loads(args.config_json))
    asyncio.run(serving.serve(lambda: FakeBatchApi(config, host=args.host, port=args.port), True))
    return 0
