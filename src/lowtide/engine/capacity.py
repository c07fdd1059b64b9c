"""Share each backend's ``max_concurrency`` across a fleet of workers.

Why slots leased in the database rather than a static split (ceiling / number of workers):
a static split wastes the share of idle or dead workers and needs every worker to agree on
how many there are. Here each worker holds a number of slot leases (rows in the database)
and uses only those; it asks for more while it has work it cannot start, and gives back what
it does not use, so the whole ceiling flows to whoever has work. While several workers want
slots, the store grants each at most its fair share (``lowtide.store.slots``): the first to
ask does not keep everything. A worker that dies loses its slots when their lease runs out.
The hot path never touches the database for this: a worker checks capacity in memory and
renews its slots every ``interval`` seconds.

A worker that is not renewed in time (frozen by SIGSTOP or a VM pause, cut off from the
database) stops starting requests when its lease runs out by its own clock (``granted_until``):
from then on other workers may hold its slots. Requests it already had in flight run on, so
the backend can see more than its ceiling until they end (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import time

from lowtide import metrics
from lowtide.engine.router import Router
from lowtide.store import Store

logger = logging.getLogger(__name__)


class CapacityKeeper:
    def __init__(
        self,
        store: Store,
        router: Router,
        backend_names: list[str],
        *,
        owner: str,
        lease: float,
        interval: float = 0.5,
    ) -> None:
        self.store, self.router, self.names = store, router, backend_names
        self.owner, self.lease, self.interval = owner, lease, interval
        self._stopping = False

    def start_empty(self) -> None:
        """Hold nothing until the database grants it."""
        for name in self.names:
            slot = self.router.slot(name)
            slot.granted, slot.granted_until = 0, 0.0

    async def run(self) -> None:
        self.start_empty()
        while not self._stopping:
            await self.tick()
            await asyncio.sleep(self.interval)

    def stop(self) -> None:
        self._stopping = True

    async def tick(self) -> None:
        for name in self.names:
            slot = self.router.slot(name)
            ceiling = slot.backend.max_concurrency
            # Starved: ask for the whole limit (the database grants what is free, up to a
            # fair share while other workers wait). Otherwise keep what is in use and a little
            # headroom, and give back the rest. An adaptive limit (``slot.limit()``) is this
            # worker's view of the engine's room, which the other workers' requests already
            # take up (docs/scheduling.md): it asks for no more than that.
            limit = slot.limit()
            want = limit if slot.starved else min(limit, slot.in_flight + 1)
            slot.starved = False
            if slot.granted is not None and want < slot.granted:
                # Shrink before the database hears of it: requests started while the call
                # runs would otherwise use slots that another worker may already have.
                slot.granted = want
            now = time.time()  # the lease the database records starts now, not after the call
            # Slots running requests are kept even when the share shrinks: nothing new starts
            # on them, and they go back as those requests end.
            slot.granted = await self.store.acquire_slots(
                name, self.owner, want, ceiling, now, self.lease, slot.in_flight
            )
            slot.granted_until = now + self.lease
            metrics.CONCURRENCY_LIMIT.labels(name).set(slot.capacity())

    async def release_all(self) -> None:
        for name in self.names:
            slot = self.router.slot(name)
            await self.store.acquire_slots(
                name, self.owner, 0, slot.backend.max_concurrency, time.time(), self.lease
            )
