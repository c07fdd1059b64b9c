"""A backend that dies and comes back: lowtide sees it go down, waits without spending the
lines' attempts, and resumes at full speed as soon as a probe finds it back, not when a long
pause would have ended. Order and causality are checked, never a duration."""

from __future__ import annotations

import time

from lowtide.engine.health import Health
from lowtide.testing.harness import free_port
from lowtide.testing.upstream import FakeUpstream, UpstreamConfig
from tests.support.batches import chat_line

from .conftest import (
    AppFactory,
    eventually,
    read_results,
    submit,
    wait_completed_at_least,
    wait_for,
)

CONCURRENCY = 16


async def test_a_killed_backend_is_used_again_as_soon_as_it_is_back(
    lowtide_app: AppFactory,
) -> None:
    port = free_port()
    config = UpstreamConfig(seed=7, latency=0.02)
    first = FakeUpstream(config, port=port)
    await first.start()
    app = await lowtide_app(
        first,
        max_concurrency=CONCURRENCY,
        engine={"probe_interval": 0.2, "probe_interval_down": 0.2, "outage_grace": 600},
    )
    assert app.server.engine is not None
    health: Health = app.server.engine.router.slot("fake").health
    c = app.client()
    lines = [chat_line(f"r-{i}", f"question {i}") for i in range(400)]
    batch = await submit(c, lines)
    await wait_completed_at_least(c, batch.id, 50)

    await first.close()  # killed with 16 requests in flight
    await eventually(lambda: not health.up, "the backend is seen to be down")
    # One pause step for the whole outage so far, however many requests failed at once.
    assert health.pauses == 0 and health.resume_at - time.monotonic() <= 0.5
    assert "fake" in (health.error or "") or "Connect" in (health.error or "")
    # Let a few pauses pass (each probe after a pause fails): the pause grows, one step each.
    await eventually(lambda: health.pauses >= 3, "three pauses have ended without an answer")
    pause_ends = health.resume_at

    second = FakeUpstream(config, port=port)
    await second.start()
    try:
        await eventually(lambda: health.up, "the backend is seen to be back")
        # A probe of the monitor found it back before the pause would have ended.
        assert time.monotonic() < pause_ends
        done = await wait_for(c, batch.id)
        stats = second.stats()
    finally:
        await second.close()
    assert done.status == "completed"
    assert done.request_counts.completed == len(lines) and done.request_counts.failed == 0
    outputs, errors = await read_results(c, done)
    assert sorted(o["custom_id"] for o in outputs) == sorted(x["custom_id"] for x in lines)
    assert errors == []
    # Back at full speed, not one request at a time.
    assert stats["max_concurrency_seen"] == CONCURRENCY
