"""``concurrency = "adaptive"`` in a running server: a batch sent to the simulated engine (in
this process) through lowtide, with the engine's metrics, while someone else holds one of the
engine's slots. The limit learns the engine's capacity, never exceeds ``max_concurrency``, and
leaves ``reserve`` slots free besides what the other user runs.

Learning takes as many scrapes of the engine as it takes (a run of them that all see a queue),
and a loaded machine scrapes late: so the batch is far longer than learning needs, and is
cancelled once the limit has learned, instead of being a fixed amount of work that must
outlast learning."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lowtide.engine.limits import AdaptiveLimit, EngineLoadLimit
from lowtide.testing.engine_sim import EngineConfig, SimEngine
from tests.support.batches import chat_line

from .conftest import AppFactory, eventually, submit, wait_for
from .test_metrics import scrape, total

MAX_SEQS = 4
RESERVE = 1
CEILING = 64
#: Half a minute of work on an idle machine, where the limit learns within a second or two.
LINES = 2000


def backend(eng: SimEngine) -> str:
    return f"""
[[backends]]
name = "sim"
base_url = "{eng.base_url}"
api_key = "EMPTY"
models = ["sim-model"]
max_concurrency = {CEILING}
concurrency = "adaptive"
reserve = {RESERVE}
"""


async def test_the_limit_learns_the_engine_and_keeps_the_reserve(
    lowtide_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No probe above the learned capacity during the test: what is checked is the rule.
    monkeypatch.setattr(EngineLoadLimit, "PROBE_MIN", 1e9)
    # Steps of 30 ms at 20x: the other user's request (8,000 tokens) runs for about 12 s on an
    # idle machine, where the limit learns in about a second (both slow down together).
    async with SimEngine(EngineConfig(max_seqs=MAX_SEQS, step_fixed_ms=30, speed=20)) as eng:
        app = await lowtide_app(extra=backend(eng))
        slot = app.server.router.slot("sim")
        assert isinstance(slot.limiter, AdaptiveLimit)
        async with aiohttp.ClientSession() as session:
            # Someone else's request, running as long as the test: one slot is theirs.
            other = {"model": "sim-model", "prompt": "someone else", "max_tokens": 8000}

            async def hold() -> None:
                async with session.post(eng.base_url + "/completions", json=other) as resp:
                    await resp.read()

            holder = asyncio.create_task(hold())
            lines = [
                chat_line(f"l{i}", f"line {i} of the batch", model="sim-model", max_tokens=24)
                for i in range(LINES)
            ]
            c = app.client()
            batch = await submit(c, lines)
            seen: list[tuple[int, int | None, int]] = []

            async def watch() -> None:
                while True:
                    seen.append((slot.limit(), slot.limiter.capacity, slot.in_flight))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())

            def learned_and_yielding() -> bool:
                # Learned, and leaving the other user's slot too: a scrape right after
                # learning may not show their request yet (lowtide's count includes answers it
                # has not read, which the engine no longer counts).
                return any(
                    capacity is not None and limit <= MAX_SEQS - RESERVE - 1
                    for limit, capacity, _ in seen
                )

            await eventually(learned_and_yielding, "the limit learned and left a slot", 120)
            await c.batches.cancel(batch.id)
            done = await wait_for(c, batch.id, patience=120)
            watcher.cancel()

            async def published() -> bool:
                found = await scrape(app)
                return total(found, "lowtide_backend_engine_capacity", backend="sim") > 0

            await eventually(published, "the learned capacity on /metrics")
            samples = await scrape(app)
            holder.cancel()
            await asyncio.gather(holder, watcher, return_exceptions=True)
    assert done.status == "cancelled" and 0 < done.request_counts.completed < len(lines)
    assert slot.limiter.capacity == MAX_SEQS  # learned from the engine's metrics
    assert all(1 <= limit <= CEILING and in_flight <= CEILING for limit, _, in_flight in seen)
    # Never more than the capacity less the reserve. (That it learned, and went lower still
    # while the other user's request was seen running, the wait before the cancel checked.)
    learned = [limit for limit, capacity, _ in seen if capacity is not None]
    assert max(learned) <= MAX_SEQS - RESERVE
    assert total(samples, "lowtide_backend_limit_source", backend="sim", source="metrics") == 1
    assert total(samples, "lowtide_backend_engine_capacity", backend="sim") == MAX_SEQS
    assert 1 <= total(samples, "lowtide_backend_concurrency_limit", backend="sim") <= CEILING
