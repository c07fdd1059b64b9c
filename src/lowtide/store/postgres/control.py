"""The PostgreSQL store's control plane: files, batches as the API sees them, accounts and
keys, retention (``FileStore``, ``BatchStore``, ``AccountStore``, ``RetentionStore``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lowtide.domain.accounts import ApiKeyRecord, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.records import BatchFilter, BatchRecord, FileRecord
from lowtide.store import filters, rows
from lowtide.store.postgres.db import Database, count


class ControlPlane(Database):
    # --- files -------------------------------------------------------------------------------

    async def create_file(
        self, record: FileRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        return await self._insert(self.q["insert_file"], rows.file_params(record), idempotency)

    async def _insert(
        self, sql: str, params: Sequence[Any], idempotency: IdempotencyClaim | None
    ) -> IdempotencyRecord | None:
        """Insert a row; with ``idempotency``, record the key in the same transaction (or
        return it as it is held already, inserting nothing)."""
        if idempotency is None:
            await self._pool.execute(sql, *params)
            return None

        async def insert(conn: Any) -> IdempotencyRecord | None:
            if (held := await self._claim_key(conn, idempotency)) is not None:
                return held
            await conn.execute(sql, *params)
            return None

        return await self._run(insert)

    async def get_file(self, account: str | None, file_id: str) -> FileRecord | None:
        row = await self._pool.fetchrow(self.q["get_file"], file_id)
        if row is None or (account is not None and row["account"] != account):
            return None
        return rows.file_from_row(row)

    async def list_files(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> list[FileRecord]:
        desc = order == "desc"
        p = filters.files("postgres", account, purpose, after, desc)
        sql = p.statement(self.q["list_files"], limit, order="DESC" if desc else "ASC")
        return [rows.file_from_row(r) for r in await self._pool.fetch(sql, *p.values)]

    async def delete_file(self, account: str, file_id: str) -> FileRecord | None:
        async def delete(conn: Any) -> FileRecord | None:
            row = await conn.fetchrow(self.q["delete_file"], file_id, account)
            if row is None:
                return None
            await self._forget_files(conn, [(row["blob_key"], file_id, row["purpose"], account)])
            return rows.file_from_row(row)

        return await self._run(delete)

    async def kept_input(self, batch_id: str) -> tuple[str, str] | None:
        row = await self._pool.fetchrow(self.q["kept_input"], batch_id)
        return (row[0], row[1]) if row is not None else None

    async def file_usage(self, account: str) -> tuple[int, int]:
        row = await self._pool.fetchrow(self.q["file_usage"], account)
        return int(row[0]), int(row[1])

    async def _forget_files(self, conn: Any, files: list[tuple[str, str, str, str]]) -> None:
        """The rows of these files (blob key, file id, purpose, account) are gone, deleted or
        expired: queue their bytes for the sweeper, and keep them as the input of the account's
        batches still validating, which were created while the file existed (the bytes stay
        queued until no live batch reads them)."""
        if not files:
            return
        keys, ids, purposes, accounts = (list(column) for column in zip(*files, strict=True))
        await conn.execute(self.q["keep_inputs"], purposes, keys, ids, accounts)
        await conn.execute(self.q["queue_blob_deletions"], keys, ids, int(time.time()))

    # --- batches (control plane) -------------------------------------------------------------

    async def create_batch(
        self, record: BatchRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        return await self._insert(self.q["insert_batch"], rows.batch_params(record), idempotency)

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord | None:
        row = await self._pool.fetchrow(self.q["get_batch"], batch_id)
        if row is None or (account is not None and row["account"] != account):
            return None
        return rows.batch_from_row(row)

    async def list_batches(
        self, account: str | None, flt: BatchFilter, *, after: str | None, limit: int
    ) -> list[BatchRecord]:
        p = filters.batches("postgres", account, flt, after)
        sql = p.statement(self.q["list_batches"], limit)
        return [rows.batch_from_row(r) for r in await self._pool.fetch(sql, *p.values)]

    async def count_live_batches(self, account: str, endpoint: str) -> int:
        return int(await self._pool.fetchval(self.q["count_live_batches"], account, endpoint))

    async def request_cancel(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        row = await self._pool.fetchrow(self.q["cancel"], now, batch_id, account)
        return rows.batch_from_row(row) if row is not None else None

    async def status_summary(self) -> tuple[dict[str, int], int]:
        counts = {r[0]: int(r[1]) for r in await self._pool.fetch(self.q["status_counts"])}
        return counts, int(await self._pool.fetchval(self.q["lines_pending"]))

    # --- accounts: rate limits, API keys, idempotency keys -----------------------------------

    async def rate_limit_hit(self, key: str, window: int, now: float) -> int:
        return int(await self._pool.fetchval(self.q["rate_limit_hit"], key, window))

    async def create_api_key(self, record: ApiKeyRecord, digest: bytes) -> None:
        await self._pool.execute(
            self.q["insert_api_key"],
            record.id,
            digest,
            record.hint,
            record.account,
            record.label,
            record.created_at,
            record.revoked_at,
        )

    async def find_api_key(self, digest: bytes) -> str | None:
        account = await self._pool.fetchval(self.q["find_api_key"], digest)
        return str(account) if account is not None else None

    async def has_api_keys(self) -> bool:
        return bool(await self._pool.fetchval(self.q["has_api_keys"]))

    async def list_api_keys(self, account: str | None) -> list[ApiKeyRecord]:
        return [ApiKeyRecord(*r) for r in await self._pool.fetch(self.q["list_api_keys"], account)]

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(self.q["revoke_api_key"], key_id, now)
        return ApiKeyRecord(*row) if row is not None else None

    async def find_idempotency(
        self, account: str, kind: str, key: str, since: int
    ) -> IdempotencyRecord | None:
        row = await self._pool.fetchrow(self.q["find_idempotency"], account, kind, key, since)
        return IdempotencyRecord(*row) if row is not None else None

    async def forget_idempotency(self, before: int) -> int:
        return count(await self._pool.execute(self.q["forget_idempotency"], before))

    async def _claim_key(self, conn: Any, claim: IdempotencyClaim) -> IdempotencyRecord | None:
        """Record the key (replacing a lapsed one); if it is held already, return it instead."""
        key = (claim.account, claim.kind, claim.key)
        params = (*key, claim.fingerprint, claim.response, claim.created_at, claim.stale_before)
        if await conn.fetchval(self.q["claim_idempotency"], *params) is not None:
            return None
        row = await conn.fetchrow(self.q["find_idempotency"], *key, claim.stale_before)
        return IdempotencyRecord(*row)

    # --- retention ---------------------------------------------------------------------------

    async def expire_files(self, now: int, limit: int) -> int:
        async def expire(conn: Any) -> int:
            gone = await conn.fetch(self.q["expire_files"], now, limit)
            await self._forget_files(conn, [(r[0], r[1], r[2], r[3]) for r in gone])
            return len(gone)

        return await self._run(expire)

    async def blobs_to_delete(self, limit: int) -> list[str]:
        return [r[0] for r in await self._pool.fetch(self.q["blobs_to_delete"], limit)]

    async def forget_blob_deletions(self, blob_keys: Sequence[str]) -> None:
        async def forget(conn: Any) -> None:
            await conn.execute(self.q["forget_blob_deletions"], list(blob_keys))
            await conn.execute(self.q["forget_kept_inputs"], list(blob_keys))

        await self._run(forget)

    async def retire_batches(self, created_before: int, limit: int) -> int:
        async def retire(conn: Any) -> int:
            found = [
                r[0] for r in await conn.fetch(self.q["retired_batches"], created_before, limit)
            ]
            if found:
                await conn.execute(self.q["retire_requests"], found)
            return len(found)

        return await self._run(retire)
