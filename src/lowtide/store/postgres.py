"""The PostgreSQL store: the state shared by a fleet of API replicas and engine workers.

Same semantics as the SQLite store, made safe for many processes at once:

- work is claimed with ``FOR UPDATE SKIP LOCKED`` (requests, batches to validate or finalise,
  expiry, slot leases), so two workers never get the same thing and never wait on each other;
- a result is committed only if its request's ``lease_epoch`` (bumped by every claim) and
  ``state = leased`` still match: a worker whose lease was taken over changes nothing;
- statements that lock many request rows lock them in key order, so that commits, heartbeats
  and finalisation running at once cannot deadlock; a deadlock or serialisation failure that
  happens anyway is retried (``_ATTEMPTS``);
- ``NOTIFY lowtide_wake`` wakes the engines of other processes; polling stays the safety net.

The fixed statements live in ``sql/postgres/queries.sql`` (``-- name:`` blocks); only those
built from the request (list filters, the terminal timestamp column) are composed here.
asyncpg is an optional dependency (``pip install 'lowtide[postgres]'``), imported when a store
is opened. The schema is brought up to date at ``open()`` (``lowtide.store.migrations``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar, cast

import orjson

from lowtide import errors
from lowtide.domain import lines
from lowtide.domain.accounts import ApiKeyRecord, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.records import BatchFilter, BatchRecord, FileRecord, JsonDict, Pricing
from lowtide.domain.status import TERMINAL, Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import (
    FAILED,
    RETRY,
    SUCCEEDED,
    ActiveBatch,
    Claim,
    Outcome,
    ResultRow,
)
from lowtide.store import migrations, rows
from lowtide.store.pg_listen import CHANNEL, Listener

logger = logging.getLogger(__name__)

T = TypeVar("T")
_ATTEMPTS = 5  # tries of a transaction that lost a deadlock or serialisation conflict
_TERMINAL = [s.value for s in TERMINAL]


def load_queries() -> dict[str, str]:
    """The ``-- name: xxx`` blocks of ``sql/postgres/queries.sql``."""
    text = resources.files("lowtide.store").joinpath("sql/postgres/queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)$", text, flags=re.MULTILINE)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


_Q = load_queries()


def load_asyncpg() -> Any:
    """asyncpg, or a configuration error saying how to install it."""
    try:
        import asyncpg
    except ImportError as exc:
        raise errors.ConfigError(
            "database_url is PostgreSQL but asyncpg is not installed: "
            "pip install 'lowtide[postgres]'"
        ) from exc
    return asyncpg


class _LostLease(Exception):
    """Rolls a finalisation back: another worker took the batch over."""


class PostgresStore:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self._conflicts: tuple[type[BaseException], ...] = ()
        self._listener: Listener | None = None

    # --- plumbing ----------------------------------------------------------------------------

    async def open(self) -> None:
        asyncpg = load_asyncpg()
        self._conflicts = (
            asyncpg.exceptions.DeadlockDetectedError,
            asyncpg.exceptions.SerializationError,
        )
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise errors.StorageError(f"cannot connect to the database: {exc}") from exc
        async with self._pool.acquire() as conn:
            applied = await migrations.upgrade(conn)
        if applied:
            logger.info("database schema upgraded: migrations %s applied", applied)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run ``fn(connection)`` (in a transaction), again if it lost a deadlock."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn:
                    if not transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except self._conflicts:
                if attempt == _ATTEMPTS - 1:
                    raise
                logger.info("transaction conflict; trying again (attempt %d)", attempt + 2)
                await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    async def notify(self) -> None:
        await self._pool.execute(f"NOTIFY {CHANNEL}")

    async def subscribe(self, callback: Callable[[], None]) -> None:
        if self._listener is None:
            self._listener = Listener(self.url, load_asyncpg())
            await self._listener.start()
        self._listener.add(callback)

    # --- files -------------------------------------------------------------------------------

    async def create_file(
        self, record: FileRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        if idempotency is None:
            await self._pool.execute(_Q["insert_file"], *rows.file_params(record))
            return None

        async def insert(conn: Any) -> IdempotencyRecord | None:
            if (held := await _claim_key(conn, idempotency)) is not None:
                return held
            await conn.execute(_Q["insert_file"], *rows.file_params(record))
            return None

        return await self._run(insert)

    async def get_file(self, account: str | None, file_id: str) -> FileRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM files WHERE id = $1", file_id)
        if row is None or (account is not None and row["account"] != account):
            return None
        return rows.file_from_row(row)

    async def list_files(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> list[FileRecord]:
        desc = order == "desc"
        sql = "SELECT * FROM files WHERE account = $1"
        params: list[Any] = [account]
        if purpose:
            params.append(purpose)
            sql += f" AND purpose = ${len(params)}"
        if after:
            params.append(after)
            cmp = "<" if desc else ">"
            sql += f" AND seq {cmp} COALESCE((SELECT seq FROM files WHERE id = ${len(params)}), -1)"
        params.append(limit)
        sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ${len(params)}"
        return [rows.file_from_row(r) for r in await self._pool.fetch(sql, *params)]

    async def delete_file(self, account: str, file_id: str) -> FileRecord | None:
        async def delete(conn: Any) -> FileRecord | None:
            row = await conn.fetchrow(
                "DELETE FROM files WHERE id = $1 AND account = $2 RETURNING *", file_id, account
            )
            if row is None:
                return None
            await _forget_files(conn, [(row["blob_key"], file_id, row["purpose"], account)])
            return rows.file_from_row(row)

        return await self._run(delete)

    async def kept_input(self, batch_id: str) -> tuple[str, str] | None:
        row = await self._pool.fetchrow(
            "SELECT purpose, blob_key FROM kept_inputs WHERE batch_id = $1", batch_id
        )
        return (row[0], row[1]) if row is not None else None

    async def file_usage(self, account: str) -> tuple[int, int]:
        row = await self._pool.fetchrow(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE account = $1", account
        )
        return int(row[0]), int(row[1])

    # --- batches (control plane) -------------------------------------------------------------

    async def create_batch(
        self, record: BatchRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        params = rows.batch_params(record)
        marks = ",".join(f"${i}" for i in range(1, len(params) + 1))
        sql = f"INSERT INTO batches ({','.join(params)}) VALUES ({marks})"
        if idempotency is None:
            await self._pool.execute(sql, *params.values())
            return None

        async def insert(conn: Any) -> IdempotencyRecord | None:
            if (held := await _claim_key(conn, idempotency)) is not None:
                return held
            await conn.execute(sql, *params.values())
            return None

        return await self._run(insert)

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM batches WHERE id = $1", batch_id)
        if row is None or (account is not None and row["account"] != account):
            return None
        return rows.batch_from_row(row)

    async def list_batches(
        self, account: str | None, flt: BatchFilter, *, after: str | None, limit: int
    ) -> list[BatchRecord]:
        where, params = batch_filter_sql(account, flt)
        if after:
            params.append(after)
            where.append(f"seq < COALESCE((SELECT seq FROM batches WHERE id = ${len(params)}), -1)")
        sql = "SELECT * FROM batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit)
        sql += f" ORDER BY seq DESC LIMIT ${len(params)}"
        return [rows.batch_from_row(r) for r in await self._pool.fetch(sql, *params)]

    async def count_live_batches(self, account: str, endpoint: str) -> int:
        n = await self._pool.fetchval(
            "SELECT COUNT(*) FROM batches WHERE account = $1 AND endpoint = $2"
            " AND status <> ALL($3)",
            account,
            endpoint,
            _TERMINAL,
        )
        return int(n)

    async def request_cancel(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        row = await self._pool.fetchrow(_Q["cancel"], now, batch_id, account)
        return rows.batch_from_row(row) if row is not None else None

    # --- engine: validation ------------------------------------------------------------------

    async def claim_validation(self, owner: str, now: float, lease: float) -> BatchRecord | None:
        row = await self._pool.fetchrow(_Q["claim_validation"], owner, now + lease, now)
        return rows.batch_from_row(row) if row is not None else None

    async def finish_validation(
        self,
        batch_id: str,
        owner: str,
        requests: Sequence[RequestLine],
        model: str,
        pricing: Pricing,
        now: int,
    ) -> bool:
        async def finish(conn: Any) -> bool:
            moved = await conn.fetchval(
                _Q["start_batch"],
                now,
                model,
                len(requests),
                pricing.input_price,
                pricing.output_price,
                pricing.discount,
                pricing.currency,
                batch_id,
                owner,
            )
            if not moved:
                await conn.execute(_Q["drop_batch_lease"], batch_id, owner)
                return False
            await conn.execute("DELETE FROM requests WHERE batch_id = $1", batch_id)
            # COPY: 50,000 rows in a fraction of a second, in the same transaction.
            await conn.copy_records_to_table(
                "requests",
                records=[(batch_id, r.line, r.custom_id, r.offset, r.length) for r in requests],
                columns=("batch_id", "line", "custom_id", "byte_offset", "length"),
            )
            return True

        return await self._run(finish)

    async def fail_validation(
        self, batch_id: str, owner: str, errors: list[JsonDict], now: int
    ) -> bool:
        async def fail(conn: Any) -> bool:
            moved = await conn.fetchval(
                _Q["fail_batch"], now, orjson.dumps(errors).decode(), batch_id, owner
            )
            if not moved:
                await conn.execute(_Q["drop_batch_lease"], batch_id, owner)
            return bool(moved)

        return await self._run(fail)

    # --- engine: dispatch --------------------------------------------------------------------

    async def active_batches(self) -> list[ActiveBatch]:
        result = await self._pool.fetch(_Q["active"])
        return [
            ActiveBatch(r[0], r[1], r[2], r[3], r[4] or rows.input_blob_key(r[6]), r[5])
            for r in result
        ]

    async def claim_requests(
        self, batch_id: str, owner: str, limit: int, now: float, lease: float
    ) -> list[Claim]:
        result = await self._pool.fetch(
            _Q["claim_requests"], batch_id, owner, now + lease, now, limit
        )
        claims = [Claim(batch_id, r[0], r[1], r[2], r[3], r[4], r[5]) for r in result]
        claims.sort(key=lambda c: c.line)
        return claims

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        if not outcomes:
            return []
        arrays = _outcome_arrays(outcomes)

        async def record(conn: Any) -> list[str]:
            return [r[0] for r in await conn.fetch(_Q["record"], *arrays) if r[1]]

        # One statement (one round trip, atomic by itself): no explicit transaction needed.
        return await self._run(record, transaction=False)

    async def heartbeat(self, owner: str, lease_until: float) -> None:
        async def beat(conn: Any) -> None:
            await conn.execute(_Q["renew_requests"], owner, lease_until)
            await conn.execute(
                "UPDATE batches SET lease_until = $2 WHERE lease_owner = $1", owner, lease_until
            )

        await self._run(beat, transaction=False)

    async def release_leases(self, owner: str | None) -> int:
        """Only an exclusive engine may pass None: in a fleet it would steal live leases."""

        async def release(conn: Any) -> int:
            if owner is None:
                await conn.execute(
                    "UPDATE batches SET lease_owner = NULL, lease_until = 0"
                    " WHERE lease_owner IS NOT NULL"
                )
                await conn.execute(
                    "UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner IS NOT NULL"
                )
                return _count(
                    await conn.execute(
                        "UPDATE requests SET state = 0, lease_owner = NULL WHERE state = 1"
                    )
                )
            await conn.execute(_Q["drop_owner_batch_leases"], owner)
            await conn.execute(
                "UPDATE backend_slots SET owner = NULL, lease_until = 0 WHERE owner = $1", owner
            )
            return _count(await conn.execute(_Q["release_requests"], owner))

        return await self._run(release)

    async def reclaim_expired_leases(self, now: float) -> int:
        return _count(await self._pool.execute(_Q["reclaim"], now))

    async def next_retry_at(self) -> float | None:
        value = await self._pool.fetchval(
            "SELECT MIN(not_before) FROM requests WHERE state = 0 AND not_before > 0"
        )
        return float(value) if value is not None else None

    async def acquire_slots(
        self, backend: str, owner: str, want: int, limit: int, now: float, lease: float
    ) -> int:
        async def acquire(conn: Any) -> int:
            await conn.execute(_Q["ensure_slots"], backend, limit)
            held = int(await conn.fetchval(_Q["renew_slots"], backend, owner, now + lease))
            if held > want:
                await conn.execute(_Q["give_back_slots"], backend, owner, held - want)
                return want
            if held < want:
                taken = await conn.fetchval(
                    _Q["take_slots"], backend, owner, now + lease, now, want - held
                )
                held += int(taken)
            return held

        return await self._run(acquire)

    # --- engine: expiry, cancel, finalisation ------------------------------------------------

    async def expire_due(self, now: int) -> list[str]:
        return [r[0] for r in await self._pool.fetch(_Q["expire"], now)]

    async def batches_to_finalize(self, now: float) -> list[str]:
        return [r[0] for r in await self._pool.fetch(_Q["to_finalize"], now)]

    async def claim_finalization(
        self, batch_id: str, owner: str, now: float, lease: float
    ) -> BatchRecord | None:
        row = await self._pool.fetchrow(
            _Q["claim_finalization"], batch_id, owner, now + lease, int(now), now
        )
        return rows.batch_from_row(row) if row is not None else None

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._pool.execute(_Q["drop_batch_lease"], batch_id, owner)

    def iter_results(self, batch_id: str) -> AsyncIterator[list[ResultRow]]:
        async def fetch(after_line: int, limit: int) -> list[ResultRow]:
            result = await self._pool.fetch(_Q["results"], batch_id, after_line, limit)
            # asyncpg's records unpack like the tuples a ResultRow is: no copy per row.
            return cast(list[ResultRow], result)

        return rows.result_chunks(fetch)

    async def finish_finalization(
        self,
        batch_id: str,
        owner: str,
        status: Status,
        files: Sequence[FileRecord],
        unrun_code: str | None,
        unrun_message: str | None,
        now: int,
    ) -> bool:
        async def finish(conn: Any) -> bool:
            # Request rows first, the batch row last: the order every commit locks them in.
            unrun = _count(
                await conn.execute(_Q["fail_unrun"], batch_id, unrun_code, unrun_message)
            )
            if files:
                await conn.executemany(_Q["insert_file"], [rows.file_params(f) for f in files])
            output_id, error_id = rows.result_file_ids(files)
            column = rows.timestamp_column(status)
            moved = await conn.fetchval(
                f"WITH moved AS (UPDATE batches SET status = $1, {column} = $2,"
                " output_file_id = $3, error_file_id = $4, failed = failed + $5,"
                " lease_owner = NULL, lease_until = 0 WHERE id = $6 AND lease_owner = $7"
                " RETURNING 1) SELECT COUNT(*) FROM moved",
                status.value,
                now,
                output_id,
                error_id,
                unrun,
                batch_id,
                owner,
            )
            if not moved:
                raise _LostLease  # another worker took the batch over: its result stands
            return True

        owner_now = await self._pool.fetchval(
            "SELECT lease_owner FROM batches WHERE id = $1", batch_id
        )
        if owner_now != owner:
            return False
        try:
            return await self._run(finish)
        except _LostLease:
            return False

    # --- accounts ----------------------------------------------------------------------------

    async def status_summary(self) -> tuple[dict[str, int], int]:
        counts = {r[0]: int(r[1]) for r in await self._pool.fetch(rows.STATUS_COUNTS_SQL)}
        return counts, int(await self._pool.fetchval(rows.LINES_PENDING_SQL))

    async def rate_limit_hit(self, key: str, window: int, now: float) -> int:
        return int(await self._pool.fetchval(_Q["rate_limit_hit"], key, window))

    # --- API keys ----------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord, digest: bytes) -> None:
        await self._pool.execute(
            "INSERT INTO api_keys (id, digest, hint, account, label, created_at, revoked_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            record.id,
            digest,
            record.hint,
            record.account,
            record.label,
            record.created_at,
            record.revoked_at,
        )

    async def find_api_key(self, digest: bytes) -> str | None:
        account = await self._pool.fetchval(
            "SELECT account FROM api_keys WHERE digest = $1 AND revoked_at IS NULL", digest
        )
        return str(account) if account is not None else None

    async def has_api_keys(self) -> bool:
        return bool(await self._pool.fetchval("SELECT EXISTS (SELECT 1 FROM api_keys)"))

    async def list_api_keys(self, account: str | None) -> list[ApiKeyRecord]:
        result = await self._pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR account = $1"
            " ORDER BY created_at, id",
            account,
        )
        return [ApiKeyRecord(*r) for r in result]

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        row = await self._pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1"
            f" RETURNING {_KEY_COLUMNS}",
            key_id,
            now,
        )
        return ApiKeyRecord(*row) if row is not None else None

    # --- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(
        self, account: str, kind: str, key: str, since: int
    ) -> IdempotencyRecord | None:
        row = await self._pool.fetchrow(_Q["find_idempotency"], account, kind, key, since)
        return IdempotencyRecord(*row) if row is not None else None

    async def forget_idempotency(self, before: int) -> int:
        return _count(
            await self._pool.execute("DELETE FROM idempotency_keys WHERE created_at < $1", before)
        )

    # --- retention ---------------------------------------------------------------------------

    async def expire_files(self, now: int, limit: int) -> int:
        async def expire(conn: Any) -> int:
            gone = await conn.fetch(_Q["expire_files"], now, limit)
            await _forget_files(conn, [(r[0], r[1], r[2], r[3]) for r in gone])
            return len(gone)

        return await self._run(expire)

    async def blobs_to_delete(self, limit: int) -> list[str]:
        return [r[0] for r in await self._pool.fetch(_Q["blobs_to_delete"], limit)]

    async def forget_blob_deletions(self, blob_keys: Sequence[str]) -> None:
        await self._pool.execute(
            "WITH kept AS (DELETE FROM kept_inputs WHERE blob_key = ANY($1::text[]))"
            " DELETE FROM blob_deletions WHERE blob_key = ANY($1::text[])",
            list(blob_keys),
        )

    async def retire_batches(self, created_before: int, limit: int) -> int:
        async def retire(conn: Any) -> int:
            found = [r[0] for r in await conn.fetch(_Q["retired_batches"], created_before, limit)]
            if found:
                await conn.execute("DELETE FROM requests WHERE batch_id = ANY($1::text[])", found)
            return len(found)

        return await self._run(retire)


_KEY_COLUMNS = "id, account, hint, created_at, label, revoked_at"


async def _claim_key(conn: Any, claim: IdempotencyClaim) -> IdempotencyRecord | None:
    """Record the key (replacing a lapsed one); if it is held already, return it instead."""
    won = await conn.fetchval(
        _Q["claim_idempotency"],
        claim.account,
        claim.kind,
        claim.key,
        claim.fingerprint,
        claim.response,
        claim.created_at,
        claim.stale_before,
    )
    if won is not None:
        return None
    row = await conn.fetchrow(
        _Q["find_idempotency"], claim.account, claim.kind, claim.key, claim.stale_before
    )
    return IdempotencyRecord(*row)


async def _forget_files(conn: Any, files: list[tuple[str, str, str, str]]) -> None:
    """The rows of these files (blob key, file id, purpose, account) are gone, deleted or
    expired: queue their bytes for the sweeper, and keep them as the input of the account's
    batches still validating, which were created while the file existed (the bytes stay
    queued until no live batch reads them)."""
    if not files:
        return
    await conn.execute(
        "INSERT INTO kept_inputs (batch_id, purpose, blob_key)"
        " SELECT b.id, f.purpose, f.blob_key"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
        " AS f (blob_key, file_id, purpose, account)"
        " JOIN batches b ON b.input_file_id = f.file_id AND b.account = f.account"
        " WHERE b.status = $5",
        [f[0] for f in files],
        [f[1] for f in files],
        [f[2] for f in files],
        [f[3] for f in files],
        Status.VALIDATING.value,
    )
    await _queue_blob_deletions(conn, [(f[0], f[1]) for f in files])


async def _queue_blob_deletions(conn: Any, blobs: list[tuple[str, str]]) -> None:
    """Queue (blob key, file id) pairs for the sweeper."""
    if blobs:
        now = int(time.time())
        await conn.execute(
            _Q["queue_blob_deletions"],
            [b[0] for b in blobs],
            [b[1] for b in blobs],
            [now] * len(blobs),
        )


def batch_filter_sql(account: str | None, flt: BatchFilter) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of the list filters (``$n`` parameters), as ``rows.batch_filter_sql``."""
    where: list[str] = []
    params: list[Any] = []

    def add(clause: str, value: Any) -> None:
        params.append(value)
        where.append(clause.replace("?", f"${len(params)}"))

    if account is not None:
        add("account = ?", account)
    if flt.statuses:
        add("status = ANY(?)", [s.value for s in flt.statuses])
    if flt.name_contains:
        add("strpos(name_lower, ?) > 0", flt.name_contains.lower())
    if flt.input_file_ids:
        add("input_file_id = ANY(?)", list(flt.input_file_ids))
    for clause, value in (
        ("created_at >= ?", flt.created_after),
        ("created_at <= ?", flt.created_before),
        ("created_at >= ?", flt.not_before),
    ):
        if value is not None:
            add(clause, value)
    return where, params


def _outcome_arrays(outcomes: Sequence[Outcome]) -> list[list[Any]]:
    """The group as one array per column, for ``unnest`` (one statement for the group)."""
    for o in outcomes:
        if o.kind not in (SUCCEEDED, FAILED, RETRY):
            raise ValueError(f"unknown outcome kind {o.kind!r}")
    return [
        [o.batch_id for o in outcomes],
        [o.line for o in outcomes],
        [o.epoch for o in outcomes],
        [o.kind for o in outcomes],
        [o.status_code for o in outcomes],
        [o.request_id for o in outcomes],
        [lines.outcome_line(o) for o in outcomes],
        [o.error_code for o in outcomes],
        [o.error_message for o in outcomes],
        [o.input_tokens for o in outcomes],
        [o.cached_tokens for o in outcomes],
        [o.output_tokens for o in outcomes],
        [o.reasoning_tokens for o in outcomes],
        [o.not_before for o in outcomes],
        [o.attempts for o in outcomes],
    ]


def _count(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 12``."""
    return int(status.rsplit(" ", 1)[-1])
