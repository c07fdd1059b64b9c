"""The SQLite store's part for backend status (``BackendStatusStore``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from lowtide.domain.backends import STALE_AFTER, BackendReport
from lowtide.store.sqlite.db import Database


class BackendStatus(Database):
    async def report_backends(self, reports: Sequence[BackendReport], now: float) -> None:
        rows = [
            (r.backend, r.owner, int(r.up), r.since, r.error, r.limit, r.in_flight, r.updated_at)
            for r in reports
        ]

        def report(c: sqlite3.Connection) -> None:
            c.executemany(self.q["report_backend"], rows)
            c.execute(self.q["forget_backends"], ("", now - STALE_AFTER))

        await self._write(report)

    async def forget_backends(self, owner: str, now: float) -> None:
        params = (owner, now - STALE_AFTER)
        await self._write(lambda c: c.execute(self.q["forget_backends"], params))

    async def backend_reports(self, now: float) -> list[BackendReport]:
        def fetch(c: sqlite3.Connection) -> list[BackendReport]:
            found = c.execute(self.q["backend_statuses"], (now - STALE_AFTER,)).fetchall()
            return [_report(row) for row in found]

        return await self._read(fetch)


def _report(row: Any) -> BackendReport:
    backend, owner, up, since, error, limit, in_flight, updated_at = row
    return BackendReport(backend, owner, bool(up), since, error, limit, in_flight, updated_at)
