"""``python -m lowtide.testing.engine_sim``: the simulated engine as a process.

It prints one ``LISTENING http://127.0.0.1:<port>`` line once it listens, then nothing, and
runs until SIGINT or SIGTERM (or until its parent process dies, unless --no-parent-watch)::

    python -m lowtide.testing.engine_sim --port 0 --max-seqs 32 --speed 10
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lowtide.testing import serving
from lowtide.testing.engine_sim.config import (
    FROM_TEXT,
    EngineConfig,
    field_hints,
    require_loopback,
)
from lowtide.testing.engine_sim.server import SimEngine

LISTENING = serving.LISTENING  # the first line the process prints, before its url


def build_parser() -> argparse.ArgumentParser:
    parser = serving.server_parser(
        "python -m lowtide.testing.engine_sim",
        "A simulated continuous-batching inference engine answering like vLLM.",
        "a JSON object of settings, before the flags",
    )
    serving.add_config_flags(parser, EngineConfig())
    return parser


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig().updated(serving.changes_from_args(args, field_hints(), FROM_TEXT))


def _checked_config(args: argparse.Namespace) -> EngineConfig:
    require_loopback(args.host)
    return config_from_args(args)


def _server(config: EngineConfig, host: str, port: int) -> SimEngine:
    return SimEngine(config, host=host, port=port)


def main(argv: Sequence[str] | None = None) -> int:
    return serving.run_server(build_parser(), argv, _checked_config, _server)
