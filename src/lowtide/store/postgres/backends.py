"""The PostgreSQL store's part for backend status (``BackendStatusStore``)."""

from __future__ import annotations

from collections.abc import Sequence

from lowtide.domain.backends import STALE_AFTER, BackendReport
from lowtide.store.postgres.db import Database


class BackendStatus(Database):
    async def report_backends(self, reports: Sequence[BackendReport], now: float) -> None:
        rows = [
            (r.backend, r.owner, r.up, r.since, r.error, r.limit, r.in_flight, r.updated_at)
            for r in reports
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(self.q["report_backend"], rows)
            await conn.execute(self.q["forget_backends"], "", now - STALE_AFTER)

    async def forget_backends(self, owner: str, now: float) -> None:
        await self._pool.execute(self.q["forget_backends"], owner, now - STALE_AFTER)

    async def backend_reports(self, now: float) -> list[BackendReport]:
        rows = await self._pool.fetch(self.q["backend_statuses"], now - STALE_AFTER)
        return [BackendReport(*row) for row in rows]
