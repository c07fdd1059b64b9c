"""The PostgreSQL store's part for offload chunks (``OffloadStore``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lowtide.domain.offload import Chunk, ChunkLine, Offloaded
from lowtide.domain.work import RequestState
from lowtide.store import offload_rows
from lowtide.store.postgres.db import Database, count

_SUCCEEDED = int(RequestState.SUCCEEDED)


class OffloadWork(Database):
    async def offload_candidates(
        self, batch_id: str, now: float, max_length: int, limit: int, *, last: bool
    ) -> list[tuple[int, int]]:
        name = "offload_candidates_last" if last else "offload_candidates_first"
        found = await self._pool.fetch(self.q[name], batch_id, now, max_length, limit)
        return [(r[0], r[1]) for r in found]

    async def offload_oversized(
        self, batch_id: str, now: float, max_length: int, limit: int
    ) -> list[int]:
        found = await self._pool.fetch(
            self.q["offload_oversized"], batch_id, now, max_length, limit
        )
        return [r[0] for r in found]

    async def take_lines(
        self,
        batch_id: str,
        holder: str,
        lease_until: float,
        lines: Sequence[int],
        chunk: Chunk | None = None,
    ) -> list[tuple[int, int, str, int]]:
        async def take(conn: Any) -> list[tuple[int, int, str, int]]:
            found = await conn.fetch(
                self.q["offload_take"], batch_id, holder, lease_until, list(lines)
            )
            taken = sorted((r[0], r[1], r[2], r[3]) for r in found)
            if chunk is not None and taken:
                chunk.lines = len(taken)
                await conn.execute(
                    self.q["offload_insert_chunk"], *offload_rows.insert_params(chunk)
                )
                await conn.execute(
                    self.q["offload_insert_lines"],
                    chunk.id,
                    [t[0] for t in taken],
                    batch_id,
                    [t[1] for t in taken],
                )
            return taken

        return await self._run(take)

    async def chunk_lines(self, chunk_id: str) -> list[ChunkLine]:
        found = await self._pool.fetch(self.q["offload_chunk_lines"], chunk_id)
        return [offload_rows.chunk_line(tuple(r)) for r in found]

    async def save_chunk(self, chunk: Chunk) -> bool:
        saved = await self._pool.fetchval(
            self.q["offload_save_chunk"], *offload_rows.save_params(chunk)
        )
        return bool(saved)

    async def claim_chunks(self, owner: str, now: float, lease: float, limit: int) -> list[Chunk]:
        found = await self._pool.fetch(
            self.q["offload_claim_chunks"], owner, now + lease, now, limit
        )
        return [offload_rows.chunk_from_row(r) for r in found]

    async def renew_chunks(self, owner: str, lease_until: float) -> None:
        await self._pool.execute(self.q["offload_renew_chunks"], owner, lease_until)

    async def release_chunks(self, owner: str | None) -> int:
        if owner is None:
            return count(await self._pool.execute(self.q["offload_release_all_chunks"]))
        return count(await self._pool.execute(self.q["offload_release_chunks"], owner))

    async def chunk_results(self, chunk_id: str) -> list[tuple[int, bool]]:
        found = await self._pool.fetch(self.q["offload_chunk_results"], chunk_id)
        return [(r[0], r[1] == _SUCCEEDED) for r in found]

    async def finish_chunk(self, chunk: Chunk) -> bool:
        async def finish(conn: Any) -> bool:
            saved = await conn.fetchval(
                self.q["offload_save_chunk"], *offload_rows.save_params(chunk)
            )
            if not saved:
                return False
            await conn.execute(self.q["offload_forget_lines"], chunk.id)
            return True

        return await self._run(finish)

    async def offload_shares(self, batch_ids: Sequence[str]) -> dict[str, tuple[Offloaded, int]]:
        if not batch_ids:
            return {}
        found = await self._pool.fetch(self.q["offload_shares"], list(batch_ids))
        return offload_rows.shares(found)

    async def chunks_of(self, batch_id: str) -> list[Chunk]:
        found = await self._pool.fetch(self.q["offload_chunks_of"], batch_id)
        return [offload_rows.chunk_from_row(r) for r in found]
