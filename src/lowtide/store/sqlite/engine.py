"""The SQLite store's engine work: validation, dispatch (claims, group commits, leases,
slots) and finalisation (``ValidationWork``, ``DispatchWork``, ``FinalizationWork``)."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from lowtide.domain import lines, pace
from lowtide.domain.records import BatchRecord, FileRecord, JsonDict, Pricing
from lowtide.domain.status import Status
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
from lowtide.store import budgets, queries, rows, slots
from lowtide.store.sqlite.db import Database

# Rows written by one ``record_finals`` statement (the comment there says why a statement
# takes many). 64 rows of 10 parameters stay under the 999 parameters of older SQLite builds.
_BULK_ROWS = 64
_NO_ROW = (None,) * 10  # pads a VALUES list to its statement's size; matches no row


class EngineWork(Database):
    # --- validation --------------------------------------------------------------------------

    async def claim_validation(self, owner: str, now: float, lease: float) -> BatchRecord | None:
        def claim(c: sqlite3.Connection) -> BatchRecord | None:
            row = c.execute(self.q["claim_validation"], (owner, now + lease, now)).fetchone()
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
        price = (pricing.input_price, pricing.output_price, pricing.discount, pricing.currency)
        params = (now, model, len(requests), *price, batch_id, owner)

        def finish(c: sqlite3.Connection) -> bool:
            if not c.execute(self.q["start_batch"], params).rowcount:
                c.execute(self.q["drop_batch_lease"], (batch_id, owner))
                return False
            c.execute(self.q["delete_requests"], (batch_id,))
            c.executemany(
                self.q["insert_requests"],
                (
                    (
                        batch_id,
                        r.line,
                        r.custom_id,
                        r.offset,
                        r.length,
                        r.send_order,
                        r.prefix_group,
                    )
                    for r in requests
                ),
            )
            return True

        return await self._write(finish)

    async def fail_validation(
        self, batch_id: str, owner: str, errors: list[JsonDict], now: int
    ) -> bool:
        params = (now, orjson.dumps(errors).decode(), batch_id, owner)

        def fail(c: sqlite3.Connection) -> bool:
            moved = c.execute(self.q["fail_batch"], params).rowcount
            if not moved:
                c.execute(self.q["drop_batch_lease"], (batch_id, owner))
            return bool(moved)

        return await self._write(fail)

    # --- dispatch ----------------------------------------------------------------------------

    async def active_batches(self) -> list[ActiveBatch]:
        def fetch(c: sqlite3.Connection) -> list[ActiveBatch]:
            return rows.active_batches(c.execute(self.q["active"]), time.time())

        return await self._read(fetch)

    async def claim_requests(
        self, batch_id: str, owner: str, limit: int, now: float, lease: float
    ) -> list[Claim]:
        params = (batch_id, owner, now + lease, now, limit)

        def claim(c: sqlite3.Connection) -> list[Claim]:
            found = c.execute(self.q["claimable_requests"], params).fetchone()[0]
            c.execute(self.q["claim_requests"], params)
            # Each row ends with its send_order: claims go out in (send_order, line) order.
            found_rows = orjson.loads(found)
            found_rows.sort(key=lambda r: (r[-1], r[0]))
            return [Claim(batch_id, *r[:-1]) for r in found_rows]

        return await self._write(claim)

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        def record(c: sqlite3.Connection) -> list[str]:
            finals = [o for o in outcomes if o.kind != RETRY]
            retries = [(o, _retry_params(o)) for o in outcomes if o.kind == RETRY]
            applied = self._apply_finals(c, finals)
            applied += [o for o, p in retries if c.execute(self.q["record_retry"], p).rowcount]
            touched: dict[str, rows.BatchDelta] = {}
            for outcome in applied:
                touched.setdefault(outcome.batch_id, rows.BatchDelta()).add(outcome)
            for batch_id, delta in touched.items():
                c.execute(self.q["add_to_batch"], (*delta.params(), batch_id, now, pace.WINDOW))
            if not touched:
                return []
            sql = queries.fill(self.q["finished_batches"], ids=",".join("?" * len(touched)))
            return [r[0] for r in c.execute(sql, list(touched))]

        return await self._write(record)

    def _apply_finals(self, c: sqlite3.Connection, finals: Sequence[Outcome]) -> list[Outcome]:
        """Apply final outcomes, each only if its lease is still the current one; return those
        applied. All are, unless a lease was lost: then that statement is undone and its
        outcomes applied one by one, to find out which."""
        applied: list[Outcome] = []
        for start in range(0, len(finals), _BULK_ROWS):
            chunk = finals[start : start + _BULK_ROWS]
            size = 1 << (len(chunk) - 1).bit_length()  # few distinct statements to prepare
            params = [p for o in chunk for p in _final_params(o)]
            params += _NO_ROW * (size - len(chunk))
            c.execute("SAVEPOINT bulk")
            if c.execute(_finals_sql(size), params).rowcount == len(chunk):
                c.execute("RELEASE bulk")
                applied += chunk
                continue
            c.execute("ROLLBACK TO bulk")
            c.execute("RELEASE bulk")
            one = self.q["record_final"]
            applied += [o for o in chunk if c.execute(one, _final_params(o)).rowcount]
        return applied

    async def heartbeat(self, owner: str, lease_until: float) -> None:
        def beat(c: sqlite3.Connection) -> None:
            c.execute(self.q["renew_requests"], (owner, lease_until))
            c.execute(self.q["renew_batch_leases"], (owner, lease_until))

        await self._write(beat)

    async def release_leases(self, owner: str | None) -> int:
        def release(c: sqlite3.Connection) -> int:
            if owner is None:
                for name in (
                    "drop_all_batch_leases",
                    "release_all_slots",
                    "forget_all_slot_demand",
                ):
                    c.execute(self.q[name])
                return c.execute(self.q["release_all_requests"]).rowcount
            for name in (
                "drop_owner_batch_leases",
                "release_owner_slots",
                "forget_owner_slot_demand",
            ):
                c.execute(self.q[name], (owner,))
            return c.execute(self.q["release_requests"], (owner,)).rowcount

        return await self._write(release)

    async def reclaim_expired_leases(self, now: float) -> int:
        return await self._write(lambda c: c.execute(self.q["reclaim"], (now,)).rowcount)

    async def next_retry_at(self) -> float | None:
        def fetch(c: sqlite3.Connection) -> float | None:
            (value,) = c.execute(self.q["next_retry_at"]).fetchone()
            return float(value) if value is not None else None

        return await self._read(fetch)

    async def acquire_slots(
        self,
        backend: str,
        owner: str,
        want: int,
        limit: int,
        now: float,
        lease: float,
        in_use: int = 0,
    ) -> int:
        until = now + lease

        def acquire(c: sqlite3.Connection) -> int:
            c.execute(self.q["record_slot_demand"], (backend, owner, want, until))
            c.execute(self.q["drop_slots_above"], (backend, limit))
            c.execute(self.q["ensure_slots"], (backend, limit))
            held = c.execute(self.q["renew_slots"], (backend, owner, until)).rowcount
            demands = [slots.Demand(*r) for r in c.execute(self.q["slot_demand"], (backend, now))]
            plan = slots.plan(owner, want, in_use, limit, held, demands)
            if plan.give_back:
                held -= c.execute(
                    self.q["give_back_slots"], (backend, owner, plan.give_back)
                ).rowcount
            elif plan.take:
                take = (backend, owner, until, now, plan.take)
                held += c.execute(self.q["take_slots"], take).rowcount
            return plan.granted(held)

        return await self._write(acquire)

    async def claim_budget(
        self,
        backend: str,
        owner: str,
        settle: tuple[int, int, int] | None,
        want_requests: int,
        want_tokens: int,
        need_tokens: int,
        rpm: int,
        tpm: int,
        now: float,
        window: float,
        until: float,
    ) -> budgets.Grant:
        def claim(c: sqlite3.Connection) -> budgets.Grant:
            if settle is not None:
                slice_id, requests, tokens = settle
                c.execute(self.q["settle_budget_slice"], (slice_id, owner, requests, tokens))
            if want_requests <= 0:
                return budgets.Grant(None)
            c.execute(self.q["forget_budget_slices"], (backend, now - window))
            used = c.execute(self.q["budget_used"], (backend,)).fetchone()
            used_requests, used_tokens, oldest = used
            got = budgets.room(
                want_requests, want_tokens, need_tokens, rpm, tpm, used_requests, used_tokens
            )
            if got is None:
                return budgets.Grant(None, retry_after=budgets.retry_after(oldest, window, now))
            row = c.execute(self.q["take_budget_slice"], (backend, owner, until, *got)).fetchone()
            return budgets.Grant(int(row[0]), *got)

        return await self._write(claim)

    # --- expiry, cancel, finalisation --------------------------------------------------------

    async def expire_due(self, now: int) -> list[str]:
        return await self._write(lambda c: [r[0] for r in c.execute(self.q["expire"], (now,))])

    async def batches_to_finalize(self, now: float) -> list[str]:
        return await self._read(lambda c: [r[0] for r in c.execute(self.q["to_finalize"], (now,))])

    async def claim_finalization(
        self, batch_id: str, owner: str, now: float, lease: float
    ) -> BatchRecord | None:
        params = (batch_id, owner, now + lease, int(now), now)

        def claim(c: sqlite3.Connection) -> BatchRecord | None:
            row = c.execute(self.q["claim_finalization"], params).fetchone()
            return rows.batch_from_row(row) if row else None

        return await self._write(claim)

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._write(lambda c: c.execute(self.q["drop_batch_lease"], (batch_id, owner)))

    def iter_results(self, batch_id: str, after: int = 0) -> AsyncIterator[list[ResultRow]]:
        def chunk(c: sqlite3.Connection, after_line: int, limit: int) -> list[ResultRow]:
            cursor = c.cursor()
            cursor.row_factory = None  # plain tuples: they are the ResultRow
            found: list[ResultRow] = cursor.execute(
                self.q["results"], (batch_id, after_line, limit)
            ).fetchall()
            return found

        async def fetch(after_line: int, limit: int) -> list[ResultRow]:
            return await self._read(lambda c: chunk(c, after_line, limit))

        return rows.result_chunks(fetch, after)

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
            row = c.execute(self.q["batch_lease_owner"], (batch_id,)).fetchone()
            if row is None or row[0] != owner:
                return False  # another worker took the batch over: its result stands
            unrun = c.execute(self.q["fail_unrun"], (batch_id, unrun_code, unrun_message))
            c.executemany(self.q["insert_file"], [rows.file_params(f) for f in files])
            output_id, error_id = rows.result_file_ids(files)
            params = (status.value, now, output_id, error_id, unrun.rowcount, batch_id, owner)
            return bool(c.execute(self.q["finish_batch"], params).rowcount)

        return await self._write(finish)


@functools.cache
def _finals_sql(size: int) -> str:
    """``record_finals`` for ``size`` rows (powers of two: a handful of statements)."""
    row = "(?,?,?,?,?,?,?,?,?,?)"
    return queries.fill(queries.load("sqlite")["record_finals"], values=",".join([row] * size))


def _retry_params(o: Outcome) -> tuple[Any, ...]:
    return (o.not_before, o.attempts, o.batch_id, o.line, o.epoch)


def _final_params(o: Outcome) -> tuple[Any, ...]:
    if o.kind not in (SUCCEEDED, FAILED):
        raise ValueError(f"unknown outcome kind {o.kind!r}")
    state = RequestState.SUCCEEDED if o.kind == SUCCEEDED else RequestState.FAILED
    return (
        int(state),
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
