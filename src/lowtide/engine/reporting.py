"""Publishing what this engine sees of its backends, for the API of every process.

Every ``REPORT_EVERY`` seconds, and within a quarter of a second of a backend going down or
coming back, the engine writes its view of each configured backend to the store
(``BackendStatusStore``); ``/ready``, ``/v1/backends`` and a batch's ``waiting_for`` read them
back (``lowtide.domain.backends``). Polling the states, rather than being told of each change,
keeps this out of the dispatcher's hot path: a look at a few booleans four times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from lowtide.domain.backends import REPORT_EVERY, BackendReport
from lowtide.engine.router import Router, Slot
from lowtide.store import Store

logger = logging.getLogger(__name__)

_LOOK_EVERY = 0.25


class BackendReporter:
    def __init__(self, store: Store, router: Router, owner: str, names: set[str]) -> None:
        self.store, self.owner = store, owner
        self.slots = [slot for slot in router.slots() if slot.backend.name in names]
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        reported: tuple[bool, ...] | None = None
        reported_at = 0.0
        while not self._stopping.is_set():
            states = tuple(slot.health.up for slot in self.slots)
            now = time.time()
            if self.slots and (states != reported or now - reported_at >= REPORT_EVERY):
                await self.store.report_backends([self._report(s, now) for s in self.slots], now)
                reported, reported_at = states, now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _LOOK_EVERY)

    def stop(self) -> None:
        self._stopping.set()

    async def forget(self) -> None:
        """This engine stops: its views go with it."""
        await self.store.forget_backends(self.owner, time.time())

    def _report(self, slot: Slot, now: float) -> BackendReport:
        health = slot.health
        return BackendReport(
            backend=slot.backend.name,
            owner=self.owner,
            up=health.up,
            since=health.since,
            error=health.error,
            limit=slot.capacity(),
            in_flight=slot.in_flight,
            updated_at=now,
        )
