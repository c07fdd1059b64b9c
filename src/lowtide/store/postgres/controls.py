"""The PostgreSQL store's part for the batch controls (``ControlStore``): pause, resume and
stop, results so far, failed lines, retries and the pace of a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from lowtide.domain.accounts import IdempotencyClaim, IdempotencyRecord
from lowtide.domain.controls import FailedRequest, ResultMarks
from lowtide.domain.pace import PaceRow
from lowtide.domain.records import BatchRecord, FileRecord
from lowtide.store import rows
from lowtide.store.postgres.control import ControlPlane

#: Failed requests read per statement.
_PAGE = 2000


class ControlWork(ControlPlane):
    async def pause_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        row = await self._pool.fetchrow(self.q["pause"], now, batch_id, account)
        return rows.batch_from_row(row) if row is not None else None

    async def resume_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        row = await self._pool.fetchrow(self.q["resume"], batch_id, account, now)
        return rows.batch_from_row(row) if row is not None else None

    async def stop_batch(self, batch_id: str, reason: str, now: int) -> bool:
        return bool(await self._pool.fetchval(self.q["stop"], now, reason, batch_id))

    async def result_marks(self, batch_id: str, after: int) -> ResultMarks:
        row = await self._pool.fetchrow(self.q["result_marks"], batch_id, after)
        return ResultMarks(*row)

    async def failed_requests(self, batch_id: str) -> AsyncIterator[list[FailedRequest]]:
        after = 0
        while found := [
            FailedRequest(*r)
            for r in await self._pool.fetch(self.q["failed_requests"], batch_id, after, _PAGE)
        ]:
            yield found
            after = found[-1].line

    async def create_retry(
        self, file: FileRecord, batch: BatchRecord, idempotency: IdempotencyClaim | None
    ) -> IdempotencyRecord | None:
        async def insert(conn: Any) -> IdempotencyRecord | None:
            if idempotency is not None and (held := await self._claim_key(conn, idempotency)):
                return held
            await conn.execute(self.q["insert_file"], *rows.file_params(file))
            await conn.execute(self.q["insert_batch"], *rows.batch_params(batch))
            return None

        return await self._run(insert)

    async def model_paces(self, model: str, since: int) -> list[PaceRow]:
        return [PaceRow(*r) for r in await self._pool.fetch(self.q["model_paces"], model, since)]
