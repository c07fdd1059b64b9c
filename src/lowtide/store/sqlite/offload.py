"""The SQLite store's part for offload chunks (``OffloadStore``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import orjson

from lowtide.domain.offload import Chunk, ChunkLine, Offloaded
from lowtide.domain.work import RequestState
from lowtide.store import offload_rows, queries
from lowtide.store.sqlite.db import Database

_SUCCEEDED = int(RequestState.SUCCEEDED)


class OffloadWork(Database):
    async def offload_candidates(
        self, batch_id: str, now: float, max_length: int, limit: int, *, last: bool
    ) -> list[tuple[int, int]]:
        name = "offload_candidates_last" if last else "offload_candidates_first"
        params = (batch_id, now, max_length, limit)
        return await self._read(lambda c: [(r[0], r[1]) for r in c.execute(self.q[name], params)])

    async def offload_oversized(
        self, batch_id: str, now: float, max_length: int, limit: int
    ) -> list[int]:
        params = (batch_id, now, max_length, limit)
        return await self._read(
            lambda c: [r[0] for r in c.execute(self.q["offload_oversized"], params)]
        )

    async def take_lines(
        self,
        batch_id: str,
        holder: str,
        lease_until: float,
        lines: Sequence[int],
        chunk: Chunk | None = None,
    ) -> list[tuple[int, int, str, int]]:
        params = (batch_id, holder, lease_until, orjson.dumps(list(lines)).decode())

        def take(c: sqlite3.Connection) -> list[tuple[int, int, str, int]]:
            taken = sorted(
                (r[0], r[1], r[2], r[3]) for r in c.execute(self.q["offload_take"], params)
            )
            if chunk is not None and taken:
                chunk.lines = len(taken)
                c.execute(self.q["offload_insert_chunk"], offload_rows.insert_params(chunk))
                c.executemany(
                    self.q["offload_insert_lines"],
                    [(chunk.id, t[0], batch_id, t[1]) for t in taken],
                )
            return taken

        return await self._write(take)

    async def chunk_lines(self, chunk_id: str) -> list[ChunkLine]:
        def fetch(c: sqlite3.Connection) -> list[ChunkLine]:
            found = c.execute(self.q["offload_chunk_lines"], (chunk_id,)).fetchall()
            return [offload_rows.chunk_line(tuple(r)) for r in found]

        return await self._read(fetch)

    async def save_chunk(self, chunk: Chunk) -> bool:
        params = offload_rows.save_params(chunk)
        return await self._write(
            lambda c: c.execute(self.q["offload_save_chunk"], params).rowcount > 0
        )

    async def claim_chunks(self, owner: str, now: float, lease: float, limit: int) -> list[Chunk]:
        params = (owner, now + lease, now, limit)

        def claim(c: sqlite3.Connection) -> list[Chunk]:
            found = c.execute(self.q["offload_claim_chunks"], params).fetchall()
            return [offload_rows.chunk_from_row(r) for r in found]

        return await self._write(claim)

    async def renew_chunks(self, owner: str, lease_until: float) -> None:
        params = (owner, lease_until)
        await self._write(lambda c: c.execute(self.q["offload_renew_chunks"], params))

    async def release_chunks(self, owner: str | None) -> int:
        def release(c: sqlite3.Connection) -> int:
            if owner is None:
                return c.execute(self.q["offload_release_all_chunks"]).rowcount
            return c.execute(self.q["offload_release_chunks"], (owner,)).rowcount

        return await self._write(release)

    async def chunk_results(self, chunk_id: str) -> list[tuple[int, bool]]:
        def fetch(c: sqlite3.Connection) -> list[tuple[int, bool]]:
            found = c.execute(self.q["offload_chunk_results"], (chunk_id,)).fetchall()
            return [(r[0], r[1] == _SUCCEEDED) for r in found]

        return await self._read(fetch)

    async def finish_chunk(self, chunk: Chunk) -> bool:
        params = offload_rows.save_params(chunk)

        def finish(c: sqlite3.Connection) -> bool:
            if not c.execute(self.q["offload_save_chunk"], params).rowcount:
                return False
            c.execute(self.q["offload_forget_lines"], (chunk.id,))
            return True

        return await self._write(finish)

    async def offload_shares(self, batch_ids: Sequence[str]) -> dict[str, tuple[Offloaded, int]]:
        if not batch_ids:
            return {}
        sql = queries.fill(self.q["offload_shares"], ids=",".join("?" * len(batch_ids)))
        ids = list(batch_ids)
        return await self._read(lambda c: offload_rows.shares(c.execute(sql, ids).fetchall()))

    async def chunks_of(self, batch_id: str) -> list[Chunk]:
        def fetch(c: sqlite3.Connection) -> list[Chunk]:
            found = c.execute(self.q["offload_chunks_of"], (batch_id,)).fetchall()
            return [offload_rows.chunk_from_row(r) for r in found]

        return await self._read(fetch)
