"""What an engine publishes of its backends (``BackendReporter``), on both stores: the limit it
works to now, the adaptive one where ``concurrency = "adaptive"``, never just the backend's
``max_concurrency``; in a fleet, no more than this process's share of it. ``/v1/backends``,
``lowtide backends`` and ``lowtide batch get`` show what is published."""

from __future__ import annotations

import asyncio
import time

from lowtide.backends.test_model import TestModelBackend
from lowtide.domain.backends import BackendReport
from lowtide.engine.limits import AdaptiveLimit, EngineLoad
from lowtide.engine.reporting import BackendReporter
from lowtide.engine.router import Router, Slot
from lowtide.store import Store

CEILING = 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def adaptive_slot(clock: FakeClock) -> tuple[Router, Slot, AdaptiveLimit]:
    backend = TestModelBackend()
    backend.name, backend.max_concurrency = "gpu", CEILING
    router = Router([(backend, ["m"])])
    slot = router.slot("gpu")
    limiter = AdaptiveLimit(CEILING, 2, clock, scrape_interval=0.1)
    slot.limiter = limiter
    return router, slot, limiter


async def published(store: Store, router: Router) -> BackendReport:
    """Run the reporter until its first report is in the store, then stop it."""
    reporter = BackendReporter(store, router, "w1", {"gpu"})
    task = asyncio.create_task(reporter.run())
    try:
        deadline = time.monotonic() + 30  # turns a hang into a failure; not what is tested
        while not (found := await store.backend_reports(time.time())):
            assert time.monotonic() < deadline, "no report published"
            await asyncio.sleep(0.01)
    finally:
        reporter.stop()
        await task
    (report,) = found
    return report


async def test_the_published_limit_is_the_adaptive_one(store: Store) -> None:
    clock = FakeClock()
    router, slot, limiter = adaptive_slot(clock)
    # A reading of the engine's metrics while lowtide climbs towards its capacity.
    limiter.observe(EngineLoad(running=20, waiting=0), own=14)
    assert limiter.source() == "metrics"
    assert slot.limit() == limiter.limit() < CEILING
    report = await published(store, router)
    assert report.limit == slot.limit()


async def test_in_a_fleet_the_published_limit_is_no_more_than_the_share(store: Store) -> None:
    clock = FakeClock()
    router, slot, _ = adaptive_slot(clock)
    slot.granted, slot.granted_until = 5, time.time() + 3600  # this process holds 5 slots
    assert slot.limit() > 5
    report = await published(store, router)
    assert report.limit == 5
