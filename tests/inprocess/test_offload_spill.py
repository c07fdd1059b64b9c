"""Spill-over: a model with an HTTP backend and a batch backend with ``spill = true``. Lines go
upstream only when the HTTP backend's pace says the batch will not end by its deadline minus
the margin, and only as many as needed.

The deadlines are seconds, not days: ``[testing] completion_window_seconds`` sets the batch's
window and ``offload_window_seconds`` the upstream's. The HTTP backend's pace is set by the fake
upstream's latency and the backend's ceiling, so it has an upper bound the machine cannot
exceed however fast it is (``max_concurrency / latency`` lines a second); the assertions on the
share that went upstream are drawn from that bound and from causality, not from a duration.
The pace is read from ``MIN_SPAN`` seconds of history, 3 here instead of 10, so that a batch
window of 24 s leaves as much room around the decision as a day does in use.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lowtide.engine.offload import spill
from lowtide.testing.batch_api import BatchApiConfig, FakeBatchApi
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import ALICE, assert_each_once, chat_line
from tests.support.offload import batch_backend, submit, wait_slowly

from .conftest import AppFactory, read_results

WINDOW = 24.0  # the batch's
UPSTREAM_WINDOW = 4.0
MARGIN = 8.0


@pytest.fixture(autouse=True)
def short_pace_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spill, "MIN_SPAN", 3.0)


@pytest.fixture
async def batch_api() -> AsyncIterator[FakeBatchApi]:
    async with FakeBatchApi(BatchApiConfig()) as api:
        yield api


def spill_config(batch_api: FakeBatchApi) -> str:
    testing = (
        f"\n[testing]\ncompletion_window_seconds = {WINDOW}\n"
        f"offload_window_seconds = {UPSTREAM_WINDOW}\n"
    )
    return batch_backend(batch_api, spill=True, deadline_margin=MARGIN) + testing


def lines_for(n: int) -> list[dict[str, Any]]:
    return [chat_line(f"s{i}", f"spill {i}") for i in range(n)]


@pytest.mark.slow
async def test_a_slow_http_backend_spills_what_it_cannot_finish(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    latency, ceiling, total = 0.1, 2, 1000
    upstream.configure(latency=latency)
    app = await lowtide_app(upstream, extra=spill_config(batch_api), max_concurrency=ceiling)
    c = app.client(ALICE)
    lines = lines_for(total)
    created = await submit(c, lines)
    batch = await wait_slowly(c, created.id, patience=WINDOW + 60)
    assert batch.status == "completed", batch
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert len(out) == total
    offloaded = batch.model_extra["offloaded"]["lines"]
    local = upstream.stats()["requests"]
    assert offloaded + local == total  # each line ran once, here or there
    # The HTTP backend can do at most `ceiling / latency` lines a second, until the batch's
    # deadline minus the margin: the rest had to go upstream.
    most_local = ceiling / latency * (WINDOW - MARGIN)
    assert offloaded >= math.floor(total - most_local)
    # Only as many as needed: the HTTP backend kept lines (those it ran while its pace was
    # measured, and those it could still run before the deadline).
    assert local > 0 and offloaded < total
    assert batch_api.stats()["batches_created"] >= 1
    assert batch.completed_at <= batch.expires_at


async def test_a_fast_http_backend_spills_nothing(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream, extra=spill_config(batch_api), max_concurrency=16)
    c = app.client(ALICE)
    lines = lines_for(1000)
    batch = await wait_slowly(c, (await submit(c, lines)).id, patience=WINDOW + 60)
    assert batch.status == "completed"
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert batch.model_extra["offloaded"] is None
    assert upstream.stats()["requests"] == 1000
    assert batch_api.stats()["uploads"] == 0
