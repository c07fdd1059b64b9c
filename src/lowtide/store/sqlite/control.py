"""The SQLite store's control plane: files, batches as the API sees them, accounts and keys,
retention (``FileStore``, ``BatchStore``, ``AccountStore``, ``RetentionStore``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from lowtide.domain.accounts import ApiKeyRecord, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.records import BatchFilter, BatchRecord, FileRecord
from lowtide.store import filters, rows
from lowtide.store.sqlite.db import Database


class ControlPlane(Database):
    # --- files -------------------------------------------------------------------------------

    async def create_file(
        self, record: FileRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and (held := self._claim_key(c, idempotency)) is not None:
                return held
            c.execute(self.q["insert_file"], rows.file_params(record))
            return None

        return await self._write(insert)

    async def get_file(self, account: str | None, file_id: str) -> FileRecord | None:
        def fetch(c: sqlite3.Connection) -> FileRecord | None:
            row = c.execute(self.q["get_file"], (file_id,)).fetchone()
            if row is None or (account is not None and row["account"] != account):
                return None
            return rows.file_from_row(row)

        return await self._read(fetch)

    async def list_files(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> list[FileRecord]:
        desc = order == "desc"
        p = filters.files("sqlite", account, purpose, after, desc)
        sql = p.statement(self.q["list_files"], limit, order="DESC" if desc else "ASC")
        return await self._read(lambda c: [rows.file_from_row(r) for r in c.execute(sql, p.values)])

    async def delete_file(self, account: str, file_id: str) -> FileRecord | None:
        def delete(c: sqlite3.Connection) -> FileRecord | None:
            row = c.execute(self.q["delete_file"], (file_id, account)).fetchone()
            if row is None:
                return None
            self._forget_files(c, [(row["blob_key"], file_id, row["purpose"], account)])
            return rows.file_from_row(row)

        return await self._write(delete)

    async def kept_input(self, batch_id: str) -> tuple[str, str] | None:
        def fetch(c: sqlite3.Connection) -> tuple[str, str] | None:
            row = c.execute(self.q["kept_input"], (batch_id,)).fetchone()
            return (row[0], row[1]) if row else None

        return await self._read(fetch)

    async def file_usage(self, account: str) -> tuple[int, int]:
        def fetch(c: sqlite3.Connection) -> tuple[int, int]:
            n, size = c.execute(self.q["file_usage"], (account,)).fetchone()
            return int(n), int(size)

        return await self._read(fetch)

    def _forget_files(self, c: sqlite3.Connection, files: list[tuple[str, str, str, str]]) -> None:
        """The rows of these files (blob key, file id, purpose, account) are gone, deleted or
        expired: queue their bytes for the sweeper, and keep them as the input of the account's
        batches still validating, which were created while the file existed (the bytes stay
        queued until no live batch reads them)."""
        c.executemany(self.q["keep_inputs"], [(p, k, f, a) for k, f, p, a in files])
        now = int(time.time())
        c.executemany(self.q["queue_blob_deletions"], [(k, f, now) for k, f, _, _ in files])

    # --- batches (control plane) -------------------------------------------------------------

    async def create_batch(
        self, record: BatchRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and (held := self._claim_key(c, idempotency)) is not None:
                return held
            c.execute(self.q["insert_batch"], rows.batch_params(record))
            return None

        return await self._write(insert)

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord | None:
        return await self._read(lambda c: self._fetch_batch(c, account, batch_id))

    async def list_batches(
        self, account: str | None, flt: BatchFilter, *, after: str | None, limit: int
    ) -> list[BatchRecord]:
        p = filters.batches("sqlite", account, flt, after)
        sql = p.statement(self.q["list_batches"], limit)
        return await self._read(
            lambda c: [rows.batch_from_row(r) for r in c.execute(sql, p.values)]
        )

    async def count_live_batches(self, account: str, endpoint: str) -> int:
        def fetch(c: sqlite3.Connection) -> int:
            (n,) = c.execute(self.q["count_live_batches"], (account, endpoint)).fetchone()
            return int(n)

        return await self._read(fetch)

    async def request_cancel(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        def cancel(c: sqlite3.Connection) -> BatchRecord | None:
            c.execute(self.q["cancel"], (now, batch_id, account))
            return self._fetch_batch(c, account, batch_id)

        return await self._write(cancel)

    async def status_summary(self) -> tuple[dict[str, int], int]:
        def fetch(c: sqlite3.Connection) -> tuple[dict[str, int], int]:
            counts = {r[0]: int(r[1]) for r in c.execute(self.q["status_counts"])}
            (pending,) = c.execute(self.q["lines_pending"]).fetchone()
            return counts, int(pending)

        return await self._read(fetch)

    def _fetch_batch(
        self, c: sqlite3.Connection, account: str | None, batch_id: str
    ) -> BatchRecord | None:
        row = c.execute(self.q["get_batch"], (batch_id,)).fetchone()
        if row is None or (account is not None and row["account"] != account):
            return None
        return rows.batch_from_row(row)

    # --- accounts: rate limits, API keys, idempotency keys -----------------------------------

    async def rate_limit_hit(self, key: str, window: int, now: float) -> int:
        def hit(c: sqlite3.Connection) -> int:
            c.execute(self.q["forget_rate_minutes"], (key, window))
            (count,) = c.execute(self.q["rate_limit_hit"], (key, window)).fetchone()
            return int(count)

        return await self._write(hit)

    async def create_api_key(self, record: ApiKeyRecord, digest: bytes) -> None:
        r = record
        params = (r.id, digest, r.hint, r.account, r.label, r.created_at, r.revoked_at)
        await self._write(lambda c: c.execute(self.q["insert_api_key"], params))

    async def find_api_key(self, digest: bytes) -> str | None:
        def fetch(c: sqlite3.Connection) -> str | None:
            row = c.execute(self.q["find_api_key"], (digest,)).fetchone()
            return str(row[0]) if row else None

        return await self._read(fetch)

    async def has_api_keys(self) -> bool:
        return bool(await self._read(lambda c: c.execute(self.q["has_api_keys"]).fetchone()[0]))

    async def list_api_keys(self, account: str | None) -> list[ApiKeyRecord]:
        def fetch(c: sqlite3.Connection) -> list[ApiKeyRecord]:
            return [ApiKeyRecord(*r) for r in c.execute(self.q["list_api_keys"], (account,))]

        return await self._read(fetch)

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        def revoke(c: sqlite3.Connection) -> ApiKeyRecord | None:
            row = c.execute(self.q["revoke_api_key"], (key_id, now)).fetchone()
            return ApiKeyRecord(*row) if row else None

        return await self._write(revoke)

    async def find_idempotency(
        self, account: str, kind: str, key: str, since: int
    ) -> IdempotencyRecord | None:
        def fetch(c: sqlite3.Connection) -> IdempotencyRecord | None:
            row = c.execute(self.q["find_idempotency"], (account, kind, key, since)).fetchone()
            return IdempotencyRecord(*row) if row else None

        return await self._read(fetch)

    async def forget_idempotency(self, before: int) -> int:
        return await self._write(
            lambda c: c.execute(self.q["forget_idempotency"], (before,)).rowcount
        )

    def _claim_key(
        self, c: sqlite3.Connection, claim: IdempotencyClaim
    ) -> IdempotencyRecord | None:
        """Record the key (replacing a lapsed one); if it is held already, return it instead."""
        key = (claim.account, claim.kind, claim.key)
        params = (*key, claim.fingerprint, claim.response, claim.created_at, claim.stale_before)
        if c.execute(self.q["claim_idempotency"], params).fetchone() is not None:
            return None
        row = c.execute(self.q["find_idempotency"], (*key, claim.stale_before)).fetchone()
        return IdempotencyRecord(*row)

    # --- retention ---------------------------------------------------------------------------

    async def expire_files(self, now: int, limit: int) -> int:
        def expire(c: sqlite3.Connection) -> int:
            gone = c.execute(self.q["expire_files"], (now, limit)).fetchall()
            self._forget_files(c, [(r[0], r[1], r[2], r[3]) for r in gone])
            return len(gone)

        return await self._write(expire)

    async def blobs_to_delete(self, limit: int) -> list[str]:
        return await self._read(
            lambda c: [r[0] for r in c.execute(self.q["blobs_to_delete"], (limit,))]
        )

    async def forget_blob_deletions(self, blob_keys: Sequence[str]) -> None:
        def forget(c: sqlite3.Connection) -> None:
            keys = [(k,) for k in blob_keys]
            c.executemany(self.q["forget_blob_deletions"], keys)
            c.executemany(self.q["forget_kept_inputs"], keys)

        await self._write(forget)

    async def retire_batches(self, created_before: int, limit: int) -> int:
        def retire(c: sqlite3.Connection) -> int:
            found = c.execute(self.q["retired_batches"], (created_before, limit)).fetchall()
            c.executemany(self.q["retire_requests"], [(r[0],) for r in found])
            return len(found)

        return await self._write(retire)
