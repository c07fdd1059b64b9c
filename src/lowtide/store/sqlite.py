"""The SQLite store: one writer thread, a small pool of reader threads, WAL.

Every write goes to one thread that owns the write connection (``BEGIN IMMEDIATE`` ... ``COMMIT``),
so writes never contend; reads run on their own connections and never wait for a write (WAL).
``synchronous=FULL`` makes every commit durable against power loss as well as ``kill -9``; group
commits (one transaction for many results) keep that cheap.

SQLite mode is one process: a second process on the same file is not supported (use PostgreSQL).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import orjson

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
    RequestState,
    ResultRow,
)
from lowtide.store import rows

T = TypeVar("T")
SCHEMA_VERSION = 3
_LEASED = int(RequestState.LEASED)
_PENDING = int(RequestState.PENDING)
_SUCCEEDED = int(RequestState.SUCCEEDED)
_FAILED = int(RequestState.FAILED)
_TERMINAL_SQL = ",".join(f"'{s.value}'" for s in TERMINAL)
_LIVE_SQL = ",".join(f"'{s.value}'" for s in Status if s not in TERMINAL)


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowtide-sqlite-w")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lowtide-sqlite-r")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    # --- plumbing ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Takes effect only when the file is created. With 4 KiB pages a result line of about
        # 1 KB overflows its page (rows of a WITHOUT ROWID table must fit a quarter of one):
        # reading 50,000 of them back took 3× longer than with 16 KiB pages (issue 5).
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=OFF")
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._write_conn is not None
            conn = self._write_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            return fn(self._reader_conn())

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def setup() -> None:
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            schema = resources.files("lowtide.store").joinpath("sql/sqlite.sql").read_text()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.executescript(schema)
            if 0 < version < 3:
                _store_result_lines(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._write_conn = conn

        await asyncio.get_running_loop().run_in_executor(self._writer, setup)

    async def close(self) -> None:
        def close_all() -> None:
            with self._conns_lock:
                for conn in self._all_conns:
                    conn.close()
                self._all_conns.clear()

        self._readers.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(self._writer, close_all)
        self._writer.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    async def notify(self) -> None:
        return None  # one process: the engine is woken directly

    async def subscribe(self, callback: Callable[[], None]) -> None:
        return None

    # --- files -------------------------------------------------------------------------------

    async def create_file(
        self, record: FileRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and (held := _claim_key(c, idempotency)) is not None:
                return held
            c.execute(
                "INSERT INTO files (id, account, purpose, filename, bytes, created_at, expires_at,"
                " status, blob_key, seq) VALUES (?,?,?,?,?,?,?,?,?,"
                " (SELECT COALESCE(MAX(seq), 0) + 1 FROM files))",
                rows.file_params(record),
            )
            return None

        return await self._write(insert)

    async def get_file(self, account: str | None, file_id: str) -> FileRecord | None:
        def fetch(c: sqlite3.Connection) -> FileRecord | None:
            row = c.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None or (account is not None and row["account"] != account):
                return None
            return rows.file_from_row(row)

        return await self._read(fetch)

    async def list_files(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> list[FileRecord]:
        desc = order == "desc"

        def fetch(c: sqlite3.Connection) -> list[FileRecord]:
            sql = "SELECT * FROM files WHERE account = ?"
            params: list[Any] = [account]
            if purpose:
                sql += " AND purpose = ?"
                params.append(purpose)
            if after:
                cmp = "<" if desc else ">"
                sql += f" AND seq {cmp} COALESCE((SELECT seq FROM files WHERE id = ?), -1)"
                params.append(after)
            sql += f" ORDER BY seq {'DESC' if desc else 'ASC'} LIMIT ?"
            params.append(limit)
            return [rows.file_from_row(r) for r in c.execute(sql, params)]

        return await self._read(fetch)

    async def delete_file(self, account: str, file_id: str) -> FileRecord | None:
        def delete(c: sqlite3.Connection) -> FileRecord | None:
            row = c.execute(
                "SELECT * FROM files WHERE id = ? AND account = ?", (file_id, account)
            ).fetchone()
            if row is None:
                return None
            c.execute("DELETE FROM files WHERE id = ?", (file_id,))
            _forget_files(c, [(row["blob_key"], file_id, row["purpose"], account)])
            return rows.file_from_row(row)

        return await self._write(delete)

    async def kept_input(self, batch_id: str) -> tuple[str, str] | None:
        def fetch(c: sqlite3.Connection) -> tuple[str, str] | None:
            row = c.execute(
                "SELECT purpose, blob_key FROM kept_inputs WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            return (row[0], row[1]) if row else None

        return await self._read(fetch)

    async def file_usage(self, account: str) -> tuple[int, int]:
        def fetch(c: sqlite3.Connection) -> tuple[int, int]:
            n, size = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE account = ?", (account,)
            ).fetchone()
            return int(n), int(size)

        return await self._read(fetch)

    # --- batches (control plane) -------------------------------------------------------------

    async def create_batch(
        self, record: BatchRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        def insert(c: sqlite3.Connection) -> IdempotencyRecord | None:
            if idempotency is not None and (held := _claim_key(c, idempotency)) is not None:
                return held
            params = rows.batch_params(record)
            names = ",".join(params)
            marks = ",".join(f":{k}" for k in params)
            c.execute(
                f"INSERT INTO batches ({names}, seq) VALUES ({marks},"
                " (SELECT COALESCE(MAX(seq), 0) + 1 FROM batches))",
                params,
            )
            return None

        return await self._write(insert)

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord | None:
        def fetch(c: sqlite3.Connection) -> BatchRecord | None:
            return _fetch_batch(c, account, batch_id)

        return await self._read(fetch)

    async def list_batches(
        self, account: str | None, flt: BatchFilter, *, after: str | None, limit: int
    ) -> list[BatchRecord]:
        where, params = rows.batch_filter_sql(account, flt)
        if after:
            where.append("seq < COALESCE((SELECT seq FROM batches WHERE id = ?), -1)")
            params.append(after)
        sql = "SELECT * FROM batches"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)

        def fetch(c: sqlite3.Connection) -> list[BatchRecord]:
            return [rows.batch_from_row(r) for r in c.execute(sql, params)]

        return await self._read(fetch)

    async def count_live_batches(self, account: str, endpoint: str) -> int:
        def fetch(c: sqlite3.Connection) -> int:
            (n,) = c.execute(
                f"SELECT COUNT(*) FROM batches WHERE account = ? AND endpoint = ?"
                f" AND status NOT IN ({_TERMINAL_SQL})",
                (account, endpoint),
            ).fetchone()
            return int(n)

        return await self._read(fetch)

    async def request_cancel(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        def cancel(c: sqlite3.Connection) -> BatchRecord | None:
            c.execute(
                "UPDATE batches SET status = 'cancelling', end_status = 'cancelled',"
                " cancelling_at = ? WHERE id = ? AND account = ?"
                " AND status IN ('validating', 'in_progress')",
                (now, batch_id, account),
            )
            return _fetch_batch(c, account, batch_id)

        return await self._write(cancel)

    # --- engine: validation ------------------------------------------------------------------

    async def claim_validation(self, owner: str, now: float, lease: float) -> BatchRecord | None:
        def claim(c: sqlite3.Connection) -> BatchRecord | None:
            row = c.execute(
                "UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ("
                " SELECT id FROM batches WHERE status = 'validating' AND lease_until < ?"
                " ORDER BY seq LIMIT 1) RETURNING *",
                (owner, now + lease, now),
            ).fetchone()
            return rows.batch_from_row(row) if row else None

        return await self._write(claim)

    async def finish_validation(
        self,
        batch_id: str,
        owner: str,
        requests: Sequence[RequestLine],
        model: str,
        pricing: Pricing,
        now: int,
    ) -> bool:
        def finish(c: sqlite3.Connection) -> bool:
            moved = c.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ?, model = ?,"
                " total = ?, input_price = ?, output_price = ?, discount = ?, currency = ?,"
                " lease_owner = NULL, lease_until = 0"
                " WHERE id = ? AND lease_owner = ? AND status = 'validating'",
                (
                    now,
                    model,
                    len(requests),
                    pricing.input_price,
                    pricing.output_price,
                    pricing.discount,
                    pricing.currency,
                    batch_id,
                    owner,
                ),
            ).rowcount
            if not moved:
                _drop_batch_lease(c, batch_id, owner)
                return False
            c.execute("DELETE FROM requests WHERE batch_id = ?", (batch_id,))
            c.executemany(
                "INSERT INTO requests (batch_id, line, custom_id, offset, length)"
                " VALUES (?,?,?,?,?)",
                ((batch_id, r.line, r.custom_id, r.offset, r.length) for r in requests),
            )
            return True

        return await self._write(finish)

    async def fail_validation(
        self, batch_id: str, owner: str, errors: list[JsonDict], now: int
    ) -> bool:
        def fail(c: sqlite3.Connection) -> bool:
            moved = c.execute(
                "UPDATE batches SET status = 'failed', failed_at = ?, errors = ?,"
                " lease_owner = NULL, lease_until = 0"
                " WHERE id = ? AND lease_owner = ? AND status = 'validating'",
                (now, orjson.dumps(errors).decode(), batch_id, owner),
            ).rowcount
            if not moved:
                _drop_batch_lease(c, batch_id, owner)
            return bool(moved)

        return await self._write(fail)

    # --- engine: dispatch --------------------------------------------------------------------

    async def active_batches(self) -> list[ActiveBatch]:
        def fetch(c: sqlite3.Connection) -> list[ActiveBatch]:
            result = c.execute(
                "SELECT b.id, b.account, b.model, b.endpoint, f.blob_key, b.expires_at,"
                " b.input_file_id FROM batches b LEFT JOIN files f ON f.id = b.input_file_id"
                " WHERE b.status = 'in_progress' ORDER BY b.expires_at, b.seq"
            ).fetchall()
            return [
                ActiveBatch(r[0], r[1], r[2], r[3], r[4] or rows.input_blob_key(r[6]), r[5])
                for r in result
            ]

        return await self._read(fetch)

    async def claim_requests(
        self, batch_id: str, owner: str, limit: int, now: float, lease: float
    ) -> list[Claim]:
        def claim(c: sqlite3.Connection) -> list[Claim]:
            # Two statements over the same rows (one transaction: they see the same ones), not
            # UPDATE ... RETURNING, whose rows come back one step, and one GIL hand-over, each
            # (see _BULK_ROWS).
            args = (batch_id, batch_id, now, limit)
            found = c.execute(_CLAIMED_JSON, args).fetchone()[0]
            c.execute(_CLAIM_SQL, (owner, now + lease, *args))
            claims = [Claim(batch_id, *r) for r in orjson.loads(found)]
            claims.sort(key=lambda cl: cl.line)
            return claims

        return await self._write(claim)

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        def record(c: sqlite3.Connection) -> list[str]:
            finals = [o for o in outcomes if o.kind != RETRY]
            retries = [o for o in outcomes if o.kind == RETRY]
            applied = _apply_finals(c, finals) + [o for o in retries if _apply_outcome(c, o)]
            touched: dict[str, rows.BatchDelta] = {}
            for outcome in applied:
                touched.setdefault(outcome.batch_id, rows.BatchDelta()).add(outcome)
            for batch_id, delta in touched.items():
                c.execute(rows.DELTA_SQL, (*delta.params(), batch_id))
            return _finished_among(c, list(touched))

        return await self._write(record)

    async def heartbeat(self, owner: str, lease_until: float) -> None:
        def beat(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE requests SET lease_until = ? WHERE state = 1 AND lease_owner = ?",
                (lease_until, owner),
            )
            c.execute(
                "UPDATE batches SET lease_until = ? WHERE lease_owner = ?", (lease_until, owner)
            )

        await self._write(beat)

    async def release_leases(self, owner: str | None) -> int:
        def release(c: sqlite3.Connection) -> int:
            if owner is None:
                c.execute("UPDATE batches SET lease_owner = NULL, lease_until = 0")
                return c.execute(
                    "UPDATE requests SET state = 0, lease_owner = NULL WHERE state = 1"
                ).rowcount
            c.execute(
                "UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?",
                (owner,),
            )
            return c.execute(
                "UPDATE requests SET state = 0, lease_owner = NULL"
                " WHERE state = 1 AND lease_owner = ?",
                (owner,),
            ).rowcount

        return await self._write(release)

    async def reclaim_expired_leases(self, now: float) -> int:
        def reclaim(c: sqlite3.Connection) -> int:
            return c.execute(
                "UPDATE requests SET state = 0, lease_owner = NULL"
                " WHERE state = 1 AND lease_until < ?",
                (now,),
            ).rowcount

        return await self._write(reclaim)

    async def next_retry_at(self) -> float | None:
        def fetch(c: sqlite3.Connection) -> float | None:
            (value,) = c.execute(
                "SELECT MIN(not_before) FROM requests WHERE state = 0 AND not_before > 0"
            ).fetchone()
            return float(value) if value is not None else None

        return await self._read(fetch)

    async def acquire_slots(
        self, backend: str, owner: str, want: int, limit: int, now: float, lease: float
    ) -> int:
        return min(want, limit)  # one process holds every slot

    # --- engine: expiry, cancel, finalisation ------------------------------------------------

    async def expire_due(self, now: int) -> list[str]:
        def expire(c: sqlite3.Connection) -> list[str]:
            result = c.execute(
                "UPDATE batches SET status = 'finalizing', end_status = 'expired',"
                " finalizing_at = ? WHERE status IN ('validating', 'in_progress')"
                " AND expires_at <= ? RETURNING id",
                (now, now),
            ).fetchall()
            return [r[0] for r in result]

        return await self._write(expire)

    async def batches_to_finalize(self, now: float) -> list[str]:
        def fetch(c: sqlite3.Connection) -> list[str]:
            result = c.execute(
                "SELECT id FROM batches b WHERE lease_until < :now AND ("
                " (status = 'in_progress' AND completed + failed >= total)"
                " OR (status IN ('cancelling', 'finalizing') AND NOT EXISTS ("
                "   SELECT 1 FROM requests r WHERE r.batch_id = b.id AND r.state = 1"
                "   AND r.lease_until >= :now)))"
                " ORDER BY seq",
                {"now": now},
            ).fetchall()
            return [r[0] for r in result]

        return await self._read(fetch)

    async def claim_finalization(
        self, batch_id: str, owner: str, now: float, lease: float
    ) -> BatchRecord | None:
        def claim(c: sqlite3.Connection) -> BatchRecord | None:
            moved = c.execute(
                "UPDATE batches SET lease_owner = ?, lease_until = ?,"
                " status = CASE WHEN status = 'in_progress' THEN 'finalizing' ELSE status END,"
                " end_status = COALESCE(end_status, 'completed'),"
                " finalizing_at = CASE WHEN status = 'in_progress' THEN ? ELSE finalizing_at END"
                " WHERE id = ? AND lease_until < ?"
                " AND (status IN ('cancelling', 'finalizing')"
                "  OR (status = 'in_progress' AND completed + failed >= total))",
                (owner, now + lease, int(now), batch_id, now),
            ).rowcount
            return _fetch_batch(c, None, batch_id) if moved else None

        return await self._write(claim)

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._write(lambda c: _drop_batch_lease(c, batch_id, owner))

    def iter_results(self, batch_id: str) -> AsyncIterator[list[ResultRow]]:
        async def fetch(after_line: int, limit: int) -> list[ResultRow]:
            read = functools.partial(
                rows.result_chunk, batch_id=batch_id, after_line=after_line, limit=limit
            )
            return await self._read(read)

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
        def finish(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT lease_owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if row is None or row[0] != owner:
                return False  # another worker took the batch over: its result stands
            unrun = c.execute(
                "UPDATE requests SET state = 3, error_code = ?, error_message = ?,"
                " lease_owner = NULL WHERE batch_id = ? AND state IN (0, 1)",
                (unrun_code, unrun_message, batch_id),
            ).rowcount
            for record in files:
                c.execute(
                    "INSERT INTO files (id, account, purpose, filename, bytes, created_at,"
                    " expires_at, status, blob_key, seq) VALUES (?,?,?,?,?,?,?,?,?,"
                    " (SELECT COALESCE(MAX(seq), 0) + 1 FROM files))",
                    rows.file_params(record),
                )
            ids = rows.result_file_ids(files)
            c.execute(
                f"UPDATE batches SET status = ?, {rows.timestamp_column(status)} = ?,"
                " output_file_id = ?, error_file_id = ?, failed = failed + ?,"
                " lease_owner = NULL, lease_until = 0 WHERE id = ?",
                (status.value, now, ids[0], ids[1], unrun, batch_id),
            )
            return True

        return await self._write(finish)

    # --- operations --------------------------------------------------------------------------

    async def status_summary(self) -> tuple[dict[str, int], int]:
        def fetch(c: sqlite3.Connection) -> tuple[dict[str, int], int]:
            counts = {r[0]: int(r[1]) for r in c.execute(rows.STATUS_COUNTS_SQL)}
            (pending,) = c.execute(rows.LINES_PENDING_SQL).fetchone()
            return counts, int(pending)

        return await self._read(fetch)

    # --- accounts ----------------------------------------------------------------------------

    async def rate_limit_hit(self, key: str, window: int, now: float) -> int:
        def hit(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM rate_limits WHERE minute < ?", (window - 1,))
            (count,) = c.execute(
                "INSERT INTO rate_limits (key, minute, count) VALUES (?, ?, 1)"
                " ON CONFLICT (key, minute) DO UPDATE SET count = count + 1 RETURNING count",
                (key, window),
            ).fetchone()
            return int(count)

        return await self._write(hit)

    # --- API keys ----------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord, digest: bytes) -> None:
        def insert(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO api_keys (id, digest, hint, account, label, created_at, revoked_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (record.id, digest, *_key_params(record)),
            )

        await self._write(insert)

    async def find_api_key(self, digest: bytes) -> str | None:
        def fetch(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT account FROM api_keys WHERE digest = ? AND revoked_at IS NULL", (digest,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._read(fetch)

    async def has_api_keys(self) -> bool:
        return bool(await self._read(lambda c: c.execute("SELECT 1 FROM api_keys").fetchone()))

    async def list_api_keys(self, account: str | None) -> list[ApiKeyRecord]:
        def fetch(c: sqlite3.Connection) -> list[ApiKeyRecord]:
            sql = f"SELECT {_KEY_COLUMNS} FROM api_keys"
            params: tuple[str, ...] = ()
            if account is not None:
                sql, params = sql + " WHERE account = ?", (account,)
            return [ApiKeyRecord(*r) for r in c.execute(sql + " ORDER BY created_at, id", params)]

        return await self._read(fetch)

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        def revoke(c: sqlite3.Connection) -> ApiKeyRecord | None:
            row = c.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?"
                f" RETURNING {_KEY_COLUMNS}",
                (now, key_id),
            ).fetchone()
            return ApiKeyRecord(*row) if row else None

        return await self._write(revoke)

    # --- idempotency keys --------------------------------------------------------------------

    async def find_idempotency(
        self, account: str, kind: str, key: str, since: int
    ) -> IdempotencyRecord | None:
        def fetch(c: sqlite3.Connection) -> IdempotencyRecord | None:
            row = c.execute(
                "SELECT fingerprint, response, created_at FROM idempotency_keys"
                " WHERE account = ? AND kind = ? AND key = ? AND created_at >= ?",
                (account, kind, key, since),
            ).fetchone()
            return IdempotencyRecord(*row) if row else None

        return await self._read(fetch)

    async def forget_idempotency(self, before: int) -> int:
        def forget(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (before,)
            ).rowcount

        return await self._write(forget)

    # --- retention ---------------------------------------------------------------------------

    async def expire_files(self, now: int, limit: int) -> int:
        def expire(c: sqlite3.Connection) -> int:
            gone = c.execute(
                "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE expires_at <= ?"
                " ORDER BY expires_at LIMIT ?) RETURNING blob_key, id, purpose, account",
                (now, limit),
            ).fetchall()
            _forget_files(c, [(r[0], r[1], r[2], r[3]) for r in gone])
            return len(gone)

        return await self._write(expire)

    async def blobs_to_delete(self, limit: int) -> list[str]:
        def fetch(c: sqlite3.Connection) -> list[str]:
            result = c.execute(
                "SELECT d.blob_key FROM blob_deletions d WHERE NOT EXISTS ("
                " SELECT 1 FROM batches b WHERE b.input_file_id = d.file_id"
                f" AND b.status IN ({_LIVE_SQL})) ORDER BY d.queued_at LIMIT ?",
                (limit,),
            ).fetchall()
            return [r[0] for r in result]

        return await self._read(fetch)

    async def forget_blob_deletions(self, blob_keys: Sequence[str]) -> None:
        def forget(c: sqlite3.Connection) -> None:
            for table in ("blob_deletions", "kept_inputs"):
                c.executemany(f"DELETE FROM {table} WHERE blob_key = ?", ((k,) for k in blob_keys))

        await self._write(forget)

    async def retire_batches(self, created_before: int, limit: int) -> int:
        def retire(c: sqlite3.Connection) -> int:
            found = c.execute(
                "SELECT id FROM batches b WHERE created_at < ?"
                f" AND status IN ({_TERMINAL_SQL})"
                " AND EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id)"
                " ORDER BY created_at LIMIT ?",
                (created_before, limit),
            ).fetchall()
            c.executemany("DELETE FROM requests WHERE batch_id = ?", ((r[0],) for r in found))
            return len(found)

        return await self._write(retire)


_KEY_COLUMNS = "id, account, hint, created_at, label, revoked_at"


def _key_params(r: ApiKeyRecord) -> tuple[object, ...]:
    """The columns after ``id, digest`` of an ``api_keys`` insert."""
    return (r.hint, r.account, r.label, r.created_at, r.revoked_at)


def _claim_key(c: sqlite3.Connection, claim: IdempotencyClaim) -> IdempotencyRecord | None:
    """Record the key (replacing a lapsed one); if it is held already, return it instead."""
    won = c.execute(
        "INSERT INTO idempotency_keys (account, kind, key, fingerprint, response, created_at)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT (account, kind, key) DO UPDATE SET"
        " fingerprint = excluded.fingerprint, response = excluded.response,"
        " created_at = excluded.created_at WHERE idempotency_keys.created_at < ? RETURNING 1",
        (
            claim.account,
            claim.kind,
            claim.key,
            claim.fingerprint,
            claim.response,
            claim.created_at,
            claim.stale_before,
        ),
    ).fetchone()
    if won is not None:
        return None
    row = c.execute(
        "SELECT fingerprint, response, created_at FROM idempotency_keys"
        " WHERE account = ? AND kind = ? AND key = ?",
        (claim.account, claim.kind, claim.key),
    ).fetchone()
    return IdempotencyRecord(*row)


def _forget_files(c: sqlite3.Connection, files: list[tuple[str, str, str, str]]) -> None:
    """The rows of these files (blob key, file id, purpose, account) are gone, deleted or
    expired: queue their bytes for the sweeper, and keep them as the input of the account's
    batches still validating, which were created while the file existed (the bytes stay
    queued until no live batch reads them)."""
    c.executemany(
        "INSERT INTO kept_inputs (batch_id, purpose, blob_key) SELECT id, ?, ? FROM batches"
        " WHERE input_file_id = ? AND account = ? AND status = ?",
        [
            (purpose, key, file_id, acct, Status.VALIDATING.value)
            for key, file_id, purpose, acct in files
        ],
    )
    _queue_blob_deletions(c, [(f[0], f[1]) for f in files])


def _queue_blob_deletions(c: sqlite3.Connection, blobs: list[tuple[str, str]]) -> None:
    """Queue (blob key, file id) pairs for the sweeper."""
    c.executemany(
        "INSERT INTO blob_deletions (blob_key, file_id, queued_at) VALUES (?, ?,"
        " CAST(strftime('%s', 'now') AS INTEGER)) ON CONFLICT (blob_key) DO NOTHING",
        blobs,
    )


def _fetch_batch(c: sqlite3.Connection, account: str | None, batch_id: str) -> BatchRecord | None:
    row = c.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
    if row is None or (account is not None and row["account"] != account):
        return None
    return rows.batch_from_row(row)


def _drop_batch_lease(c: sqlite3.Connection, batch_id: str, owner: str) -> None:
    c.execute(
        "UPDATE batches SET lease_owner = NULL, lease_until = 0 WHERE id = ? AND lease_owner = ?",
        (batch_id, owner),
    )


def _store_result_lines(c: sqlite3.Connection) -> None:
    """Schema 2 → 3: requests keep their rendered result line instead of the answer body.
    Lines of batches still running are rendered now from what schema 2 kept."""
    c.execute("BEGIN IMMEDIATE")
    c.execute("ALTER TABLE requests ADD COLUMN result BLOB")
    old = c.execute(
        "SELECT r.batch_id, r.line, r.custom_id, r.state, r.status_code, r.request_id, r.body,"
        " r.error_code, r.error_message FROM requests r JOIN batches b ON b.id = r.batch_id"
        f" WHERE r.state IN (2, 3) AND b.status NOT IN ({_TERMINAL_SQL})"
    ).fetchall()
    c.executemany(
        "UPDATE requests SET result = ? WHERE batch_id = ? AND line = ?",
        [(rows.legacy_result_line(r), r[0], r[1]) for r in old],
    )
    c.execute("ALTER TABLE requests DROP COLUMN body")
    c.execute("COMMIT")


_FENCE = " WHERE batch_id = ? AND line = ? AND lease_epoch = ? AND state = 1"
_RETRY_SQL = (
    "UPDATE requests SET state = 0, lease_owner = NULL, not_before = ?, attempts = ?" + _FENCE
)
_FINAL_SQL = (
    "UPDATE requests SET state = ?, lease_owner = NULL, attempts = ?, status_code = ?,"
    " request_id = ?, result = ?, error_code = ?, error_message = ?" + _FENCE
)


def _apply_outcome(c: sqlite3.Connection, o: Outcome) -> bool:
    """Apply one outcome if its lease is still the current one (the fencing check)."""
    if o.kind == RETRY:
        return bool(c.execute(_RETRY_SQL, _retry_params(o)).rowcount)
    return bool(c.execute(_FINAL_SQL, _final_params(o)).rowcount)


# Rows written by one statement in a group commit. Each step of a statement gives the GIL up
# and takes it back, and while the engine's thread holds it, taking it back waits up to a
# switch interval: one UPDATE per row cost 7 µs a row alone and 170-180 µs a row next to a busy
# Python thread; one UPDATE ... FROM (VALUES ...) of 230 rows, 8 and 15 µs a row (issue 5).
# 64 rows of 10 parameters stay under the 999 parameters that older SQLite builds allow.
_BULK_ROWS = 64
_NO_ROW = (None,) * 10  # pads a VALUES list to its statement's size; matches no row

# The requests to claim: pending and due, in line order (``batch_id, now, limit``).
_TO_CLAIM = (
    "SELECT line FROM requests"
    # INDEXED BY: the planner otherwise walks the primary key past every finished row of the
    # batch, so claims slowed from 1 to 4 ms over a 50k batch.
    " INDEXED BY requests_by_state"
    " WHERE batch_id = ? AND state = 0 AND not_before <= ? ORDER BY line LIMIT ?"
)
_CLAIMED_JSON = (
    "SELECT json_group_array(json_array(line, custom_id, offset, length, attempts,"
    f" lease_epoch + 1)) FROM requests WHERE batch_id = ? AND line IN ({_TO_CLAIM})"
)
_CLAIM_SQL = (
    "UPDATE requests SET state = 1, lease_owner = ?, lease_until = ?,"
    f" lease_epoch = lease_epoch + 1 WHERE batch_id = ? AND line IN ({_TO_CLAIM})"
)


def _apply_finals(c: sqlite3.Connection, finals: Sequence[Outcome]) -> list[Outcome]:
    """Apply final outcomes, each only if its lease is still the current one; return those
    applied. All are, unless a lease was lost: then that statement is undone and its outcomes
    applied one by one, to find out which."""
    applied: list[Outcome] = []
    for start in range(0, len(finals), _BULK_ROWS):
        chunk = finals[start : start + _BULK_ROWS]
        size = 1 << (len(chunk) - 1).bit_length()  # few distinct statements to prepare
        params = [p for o in chunk for p in _final_params(o)]
        params += _NO_ROW * (size - len(chunk))
        c.execute("SAVEPOINT bulk")
        if c.execute(_final_bulk_sql(size), params).rowcount == len(chunk):
            c.execute("RELEASE bulk")
            applied += chunk
            continue
        c.execute("ROLLBACK TO bulk")
        c.execute("RELEASE bulk")
        applied += [o for o in chunk if _apply_outcome(c, o)]
    return applied


@functools.cache
def _final_bulk_sql(size: int) -> str:
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * size)
    return (
        "UPDATE requests SET state = o.column1, lease_owner = NULL, attempts = o.column2,"
        " status_code = o.column3, request_id = o.column4, result = o.column5,"
        " error_code = o.column6, error_message = o.column7"
        f" FROM (VALUES {values}) AS o WHERE requests.batch_id = o.column8"
        " AND requests.line = o.column9 AND requests.lease_epoch = o.column10"
        " AND requests.state = 1"
    )


def _retry_params(o: Outcome) -> tuple[Any, ...]:
    return (o.not_before, o.attempts, o.batch_id, o.line, o.epoch)


def _final_params(o: Outcome) -> tuple[Any, ...]:
    if o.kind not in (SUCCEEDED, FAILED):
        raise ValueError(f"unknown outcome kind {o.kind!r}")
    state = _SUCCEEDED if o.kind == SUCCEEDED else _FAILED
    return (
        state,
        o.attempts,
        o.status_code,
        o.request_id,
        lines.outcome_line(o),
        o.error_code,
        o.error_message,
        o.batch_id,
        o.line,
        o.epoch,
    )


def _finished_among(c: sqlite3.Connection, batch_ids: list[str]) -> list[str]:
    if not batch_ids:
        return []
    marks = ",".join("?" * len(batch_ids))
    result = c.execute(
        f"SELECT id FROM batches WHERE id IN ({marks}) AND completed + failed >= total",
        batch_ids,
    ).fetchall()
    return [r[0] for r in result]
