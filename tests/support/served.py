"""``lowtide serve`` as a process and the synchronous ``openai`` SDK: the fixtures and helpers
of the tiers that start real processes (acceptance, browser, and the client commands of
tests/integration). Their conftests import the fixtures from here."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lowtide.testing.harness import Lowtide, Upstream
from tests.support.batches import ALICE, TERMINAL, config_toml, jsonl, parse_jsonl


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """The fake upstream as a process of its own (``lowtide.testing.harness.Upstream``)."""
    up = Upstream("--seed", "7", log=tmp_path / "upstream.log")
    yield up
    up.stop()


@contextlib.contextmanager
def serving(root: Path) -> Iterator[tuple[Lowtide, Upstream]]:
    """``lowtide serve`` in ``root`` with a fake upstream of its own (for a module's fixture:
    each start costs a second); both stopped on the way out."""
    upstream = Upstream("--seed", "7", log=root / "upstream.log")
    server = Lowtide(root, config_toml(upstream))
    try:
        server.start()
        yield server, upstream
    finally:
        server.stop()
        upstream.stop()


ServerFactory = Callable[..., Lowtide]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``make_server(upstream=None, *, extra_args=(), **config)``: start ``lowtide serve``
    with ``config_toml(upstream, **config)``; stopped when the test ends."""
    started: list[Lowtide] = []

    def make(
        upstream: Upstream | None = None, *, extra_args: tuple[str, ...] = (), **options: Any
    ) -> Lowtide:
        workdir = tmp_path / f"lowtide{len(started)}"
        workdir.mkdir()
        server = Lowtide(workdir, config_toml(upstream, **options), extra_args=extra_args)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()


def client(server: Lowtide, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def submit(
    c: openai.OpenAI,
    lines: list[dict[str, Any]],
    *,
    endpoint: str = "/v1/chat/completions",
    **kwargs: Any,
) -> Any:
    f = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )


def wait_for(
    c: openai.OpenAI,
    batch_id: str,
    statuses: set[str] | frozenset[str] = TERMINAL,
    timeout: float = 60.0,
) -> Any:
    """Poll until the batch is in one of ``statuses``; the deadline only turns a hang into a
    failure."""
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}: {batch}")
        time.sleep(0.1)


def read_results(c: openai.OpenAI, batch: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = c.files.content(batch.output_file_id).text if batch.output_file_id else ""
    err = c.files.content(batch.error_file_id).text if batch.error_file_id else ""
    return parse_jsonl(out), parse_jsonl(err)
