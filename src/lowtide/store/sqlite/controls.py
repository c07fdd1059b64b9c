"""The SQLite store's part for the batch controls (``ControlStore``): pause, resume and stop,
results so far, failed lines, retries and the pace of a model."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable

from lowtide.domain.accounts import IdempotencyClaim, IdempotencyRecord
from lowtide.domain.controls import FailedRequest, ResultMarks
from lowtide.domain.pace import PaceRow
from lowtide.domain.records import BatchRecord, FileRecord
from lowtide.store import rows
from lowtide.store.sqlite.control import ControlPlane

#: Failed requests read per statement.
_PAGE = 2000


class ControlWork(ControlPlane):
    async def pause_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        def pause(c: sqlite3.Connection) -> BatchRecord | None:
            c.execute(self.q["pause"], (now, batch_id, account))
            return self._fetch_batch(c, account, batch_id)

        return await self._write(pause)

    async def resume_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        def resume(c: sqlite3.Connection) -> BatchRecord | None:
            c.execute(self.q["resume"], (batch_id, account, now))
            return self._fetch_batch(c, account, batch_id)

        return await self._write(resume)

    async def stop_batch(self, batch_id: str, reason: str, now: int) -> bool:
        params = (now, reason, batch_id)
        return bool(await self._write(lambda c: c.execute(self.q["stop"], params).rowcount))

    async def result_marks(self, batch_id: str, after: int) -> ResultMarks:
        def fetch(c: sqlite3.Connection) -> ResultMarks:
            return ResultMarks(*c.execute(self.q["result_marks"], (batch_id, after)).fetchone())

        return await self._read(fetch)

    async def failed_requests(self, batch_id: str) -> AsyncIterator[list[FailedRequest]]:
        def page(after: int) -> Callable[[sqlite3.Connection], list[FailedRequest]]:
            def fetch(c: sqlite3.Connection) -> list[FailedRequest]:
                found = c.execute(self.q["failed_requests"], (batch_id, after, _PAGE))
                return [FailedRequest(*r) for r in found]

            return fetch

        after = 0
        while found := await self._read(page(after)):
            yield found
            after = found[-1].line

    async def create_retry(
        self, file: FileRecord, batch: BatchRecord, idempotency: IdempotencyClaim | None
    ) -> IdempotencyRecord | None:
        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and (held := self._claim_key(c, idempotency)) is not None:
                return held
            c.execute(self.q["insert_file"], rows.file_params(file))
            c.execute(self.q["insert_batch"], rows.batch_params(batch))
            return None

        return await self._write(insert)

    async def model_paces(self, model: str, since: int) -> list[PaceRow]:
        def fetch(c: sqlite3.Connection) -> list[PaceRow]:
            return [PaceRow(*r) for r in c.execute(self.q["model_paces"], (model, since))]

        return await self._read(fetch)
