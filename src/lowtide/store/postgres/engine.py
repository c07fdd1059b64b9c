"""The PostgreSQL store's engine work: validation, dispatch (claims, group commits, leases,
slots) and finalisation (``ValidationWork``, ``DispatchWork``, ``FinalizationWork``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import orjson

from lowtide.domain import lines, pace
from lowtide.domain.records import BatchRecord, FileRecord, JsonDict, Pricing
from lowtide.domain.status import Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, ActiveBatch, Claim, Outcome, ResultRow
from lowtide.store import budgets, rows, slots
from lowtide.store.postgres.db import Database, count

#: The columns ``finish_validation`` copies into ``requests``.
_REQUEST_COLUMNS = (
    "batch_id",
    "line",
    "custom_id",
    "byte_offset",
    "length",
    "send_order",
    "prefix_group",
)


class _LostLease(Exception):
    """Rolls a finalisation back: another worker took the batch over."""


class EngineWork(Database):
    # --- validation --------------------------------------------------------------------------

    async def claim_validation(self, owner: str, now: float, lease: float) -> BatchRecord | None:
        row = await self._pool.fetchrow(self.q["claim_validation"], owner, now + lease, now)
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
        price = (pricing.input_price, pricing.output_price, pricing.discount, pricing.currency)

        async def finish(conn: Any) -> bool:
            moved = await conn.fetchval(
                self.q["start_batch"], now, model, len(requests), *price, batch_id, owner
            )
            if not moved:
                await conn.execute(self.q["drop_batch_lease"], batch_id, owner)
                return False
            await conn.execute(self.q["delete_requests"], batch_id)
            # COPY: 50,000 rows in a fraction of a second, in the same transaction.
            await conn.copy_records_to_table(
                "requests",
                records=[
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
                ],
                columns=_REQUEST_COLUMNS,
            )
            return True

        return await self._run(finish)

    async def fail_validation(
        self, batch_id: str, owner: str, errors: list[JsonDict], now: int
    ) -> bool:
        async def fail(conn: Any) -> bool:
            moved = await conn.fetchval(
                self.q["fail_batch"], now, orjson.dumps(errors).decode(), batch_id, owner
            )
            if not moved:
                await conn.execute(self.q["drop_batch_lease"], batch_id, owner)
            return bool(moved)

        return await self._run(fail)

    # --- dispatch ----------------------------------------------------------------------------

    async def active_batches(self) -> list[ActiveBatch]:
        return rows.active_batches(await self._pool.fetch(self.q["active"]), time.time())

    async def claim_requests(
        self, batch_id: str, owner: str, limit: int, now: float, lease: float
    ) -> list[Claim]:
        result = await self._pool.fetch(
            self.q["claim_requests"], batch_id, owner, now + lease, now, limit
        )
        # Claims go out in (send_order, line) order: RETURNING gives the rows in any order.
        result.sort(key=lambda r: (r[7], r[0]))
        return [Claim(batch_id, r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in result]

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        if not outcomes:
            return []
        arrays = _outcome_arrays(outcomes)

        async def record(conn: Any) -> list[str]:
            found = await conn.fetch(self.q["record_outcomes"], *arrays, now, pace.WINDOW)
            return [r[0] for r in found if r[1]]

        # One statement (one round trip, atomic by itself): no explicit transaction needed.
        return await self._run(record, transaction=False)

    async def heartbeat(self, owner: str, lease_until: float) -> None:
        async def beat(conn: Any) -> None:
            await conn.execute(self.q["renew_requests"], owner, lease_until)
            await conn.execute(self.q["renew_batch_leases"], owner, lease_until)

        await self._run(beat, transaction=False)

    async def release_leases(self, owner: str | None) -> int:
        """Only an exclusive engine may pass None: in a fleet it would steal live leases."""

        async def release(conn: Any) -> int:
            if owner is None:
                for name in (
                    "drop_all_batch_leases",
                    "release_all_slots",
                    "forget_all_slot_demand",
                ):
                    await conn.execute(self.q[name])
                return count(await conn.execute(self.q["release_all_requests"]))
            for name in (
                "drop_owner_batch_leases",
                "release_owner_slots",
                "forget_owner_slot_demand",
            ):
                await conn.execute(self.q[name], owner)
            return count(await conn.execute(self.q["release_requests"], owner))

        return await self._run(release)

    async def reclaim_expired_leases(self, now: float) -> int:
        return count(await self._pool.execute(self.q["reclaim"], now))

    async def next_retry_at(self) -> float | None:
        value = await self._pool.fetchval(self.q["next_retry_at"])
        return float(value) if value is not None else None

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

        async def acquire(conn: Any) -> int:
            await conn.execute(self.q["record_slot_demand"], backend, owner, want, until)
            await conn.execute(self.q["drop_slots_above"], backend, limit)
            await conn.execute(self.q["ensure_slots"], backend, limit)
            held = int(await conn.fetchval(self.q["renew_slots"], backend, owner, until))
            found = await conn.fetch(self.q["slot_demand"], backend, now)
            plan = slots.plan(owner, want, in_use, limit, held, [slots.Demand(*r) for r in found])
            if plan.give_back:
                given = await conn.execute(
                    self.q["give_back_slots"], backend, owner, plan.give_back
                )
                held -= count(given)
            elif plan.take:
                taken = await conn.fetchval(
                    self.q["take_slots"], backend, owner, until, now, plan.take
                )
                held += int(taken)
            return plan.granted(held)

        return await self._run(acquire)

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
        async def claim(conn: Any) -> budgets.Grant:
            await conn.execute(self.q["lock_budget"], backend)
            if settle is not None:
                slice_id, requests, tokens = settle
                await conn.execute(self.q["settle_budget_slice"], slice_id, owner, requests, tokens)
            if want_requests <= 0:
                return budgets.Grant(None)
            await conn.execute(self.q["forget_budget_slices"], backend, now - window)
            used_requests, used_tokens, oldest = await conn.fetchrow(self.q["budget_used"], backend)
            got = budgets.room(
                want_requests, want_tokens, need_tokens, rpm, tpm, used_requests, used_tokens
            )
            if got is None:
                return budgets.Grant(None, retry_after=budgets.retry_after(oldest, window, now))
            slice_id = await conn.fetchval(self.q["take_budget_slice"], backend, owner, until, *got)
            return budgets.Grant(int(slice_id), *got)

        return await self._run(claim)

    # --- expiry, cancel, finalisation --------------------------------------------------------

    async def expire_due(self, now: int) -> list[str]:
        return [r[0] for r in await self._pool.fetch(self.q["expire"], now)]

    async def batches_to_finalize(self, now: float) -> list[str]:
        return [r[0] for r in await self._pool.fetch(self.q["to_finalize"], now)]

    async def claim_finalization(
        self, batch_id: str, owner: str, now: float, lease: float
    ) -> BatchRecord | None:
        row = await self._pool.fetchrow(
            self.q["claim_finalization"], batch_id, owner, now + lease, int(now), now
        )
        return rows.batch_from_row(row) if row is not None else None

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self._pool.execute(self.q["drop_batch_lease"], batch_id, owner)

    def iter_results(self, batch_id: str, after: int = 0) -> AsyncIterator[list[ResultRow]]:
        async def fetch(after_line: int, limit: int) -> list[ResultRow]:
            result = await self._pool.fetch(self.q["results"], batch_id, after_line, limit)
            # asyncpg's records unpack like the tuples a ResultRow is: no copy per row.
            return cast(list[ResultRow], result)

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
        async def finish(conn: Any) -> bool:
            # Request rows first, the batch row last: the order every commit locks them in.
            unrun = count(
                await conn.execute(self.q["fail_unrun"], batch_id, unrun_code, unrun_message)
            )
            if files:
                await conn.executemany(self.q["insert_file"], [rows.file_params(f) for f in files])
            output_id, error_id = rows.result_file_ids(files)
            params = (status.value, now, output_id, error_id, unrun, batch_id, owner)
            if not await conn.fetchval(self.q["finish_batch"], *params):
                raise _LostLease  # another worker took the batch over: its result stands
            return True

        if await self._pool.fetchval(self.q["batch_lease_owner"], batch_id) != owner:
            return False
        try:
            return await self._run(finish)
        except _LostLease:
            return False


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
