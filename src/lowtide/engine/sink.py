"""Group commit of outcomes: one transaction every ``interval`` seconds or ``max_batch`` results.

One row per transaction costs about 8k rows/s on SQLite (WAL, synchronous=FULL); a hundred per
transaction about 108k rows/s. An outcome not yet committed when the process dies is lost
with it, and its request, still leased, runs again after the restart: the backend sees it
twice (at-least-once), the result files never do (exactly-once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from lowtide.domain.work import Outcome
from lowtide.engine.events import wait_event
from lowtide.store import Store

logger = logging.getLogger(__name__)


class ResultSink:
    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        max_batch: int,
        on_finished: Callable[[list[str]], None],
        on_committed: Callable[[Sequence[Outcome]], None] | None = None,
    ) -> None:
        """``on_committed(group)`` is told of each group once it is committed."""
        self.store = store
        self.on_committed = on_committed
        self.interval = interval
        self.max_batch = max_batch
        self.on_finished = on_finished
        self._buffer: list[Outcome] = []
        self._full = asyncio.Event()
        self._stopping = False
        self.committed = 0

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        if len(self._buffer) >= self.max_batch:
            self._full.set()

    def pending(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        while not self._stopping:
            await wait_event(self._full, self.interval)
            await self.flush()

    def stop(self) -> None:
        self._stopping = True
        self._full.set()

    async def flush(self) -> None:
        if not self._buffer:
            return
        group, self._buffer = self._buffer, []
        try:
            finished = await self.store.record_outcomes(group, int(time.time()))
        except Exception:
            # Keep them: the next flush tries again. Leases keep the requests ours meanwhile.
            logger.exception("group commit of %d outcomes failed; will retry", len(group))
            self._buffer[:0] = group
            await asyncio.sleep(0.5)
            return
        self.committed += len(group)
        if self.on_committed is not None:
            self.on_committed(group)
        if finished:
            self.on_finished(finished)
