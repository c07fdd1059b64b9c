"""Acceptance fixtures: the real ``lowtide serve`` process started the README's way, the
official ``openai`` SDK, and the fake upstream as a process, all on loopback.

This tier holds what needs a real process: serving the README's way, signals (SIGKILL,
SIGTERM, SIGSTOP, Ctrl-C), the command line, the engine's own thread, a fleet of processes,
and HTTP below the ASGI level. Everything else runs in tests/inprocess. The fixtures and
helpers live in ``tests.support`` (shared with the browser tier) and are named here."""

from __future__ import annotations

from tests.support.batches import (
    ALICE,
    BOB,
    MODEL,
    TERMINAL,
    assert_each_once,
    chat_line,
    config_toml,
    jsonl,
)
from tests.support.served import (
    ServerFactory,
    client,
    make_server,
    read_results,
    submit,
    upstream,
    wait_for,
)

__all__ = [
    "ALICE",
    "BOB",
    "MODEL",
    "TERMINAL",
    "ServerFactory",
    "assert_each_once",
    "chat_line",
    "client",
    "config_toml",
    "jsonl",
    "make_server",
    "read_results",
    "submit",
    "upstream",
    "wait_for",
]
