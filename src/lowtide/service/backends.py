"""The backends as the engines see them: for ``/ready``, ``/v1/backends`` and the
``waiting_for`` of a batch (``lowtide.domain.backends``).

The engines' reports are read at most once a second per process: a page of batches or a burst
of polls costs one small query, and a change is seen within a second of its report.
"""

from __future__ import annotations

import time

from lowtide.domain.backends import BackendView, summarize, waiting_for
from lowtide.domain.records import BatchRecord
from lowtide.domain.status import Status
from lowtide.settings import Settings
from lowtide.store import Store

_FRESH_FOR = 1.0


class BackendService:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.store = store
        self.models = {b.name: tuple(b.models) for b in settings.backends}
        self._views: list[BackendView] = []
        self._read_at = -_FRESH_FOR

    async def views(self) -> list[BackendView]:
        """Every configured backend, in the configured order."""
        if time.monotonic() - self._read_at >= _FRESH_FOR:
            reports = await self.store.backend_reports(time.time())
            self._views = summarize(self.models, reports)
            self._read_at = time.monotonic()
        return self._views

    async def mark_waiting(self, batches: list[BatchRecord]) -> None:
        """Set ``waiting_for`` on the batches in progress whose every backend is down."""
        running = [b for b in batches if b.status == Status.IN_PROGRESS and b.model]
        if not running or not self.models:
            return
        views = await self.views()
        for batch in running:
            assert batch.model is not None
            batch.waiting_for = waiting_for(views, batch.model)
