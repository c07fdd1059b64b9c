"""``python -m lowtide.testing.upstream``: the fake upstream as a process.

It prints one ``LISTENING http://127.0.0.1:<port>`` line once it listens, then nothing, and
runs until SIGINT or SIGTERM (or until its parent process dies, unless --no-parent-watch)::

    python -m lowtide.testing.upstream --port 0 --rate-429 0.1 --retry-after 0.5
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lowtide.testing import serving
from lowtide.testing.upstream.config import (
    FROM_TEXT,
    UpstreamConfig,
    field_hints,
    require_loopback,
)
from lowtide.testing.upstream.server import FakeUpstream


def _build_parser() -> argparse.ArgumentParser:
    parser = serving.server_parser(
        "python -m lowtide.testing.upstream",
        "A fake OpenAI-compatible model server with fault injection.",
        "a JSON object of config fields, before the flags",
    )
    serving.add_config_flags(parser, UpstreamConfig(), _shown)
    return parser


def _shown(default: object) -> object:
    return ",".join(map(str, default)) if isinstance(default, tuple) else default


def _config_from_args(args: argparse.Namespace) -> UpstreamConfig:
    require_loopback(args.host)
    changes = serving.changes_from_args(args, field_hints(), FROM_TEXT)
    return UpstreamConfig().updated(changes)


def _server(config: UpstreamConfig, host: str, port: int) -> FakeUpstream:
    return FakeUpstream(config, host=host, port=port)


def main(argv: Sequence[str] | None = None) -> int:
    return serving.run_server(_build_parser(), argv, _config_from_args, _server)
