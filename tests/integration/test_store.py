"""The ``Store`` contract, written once and run against SQLite and PostgreSQL alike.

Times are passed explicitly (a lease "runs out" by asking with a later ``now``), so no test
sleeps or depends on how fast the machine is. Tests that need several processes sharing one
database (concurrent claimers, slot leases, wake-ups) run on PostgreSQL only: a SQLite
database belongs to one process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import asyncpg
import orjson
import pytest

from lowtide.domain.records import BatchFilter, BatchRecord, FileRecord, Pricing, Usage
from lowtide.domain.status import Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Claim, Outcome, RequestState
from lowtide.store import Store, open_store, postgres
from lowtide.store.pg_listen import APPLICATION_NAME

NOW = int(time.time())
LEASE = 60.0
ENDPOINT = "/v1/chat/completions"


def file_rec(file_id: str, account: str = "alice", purpose: str = "batch") -> FileRecord:
    return FileRecord(
        id=file_id,
        account=account,
        purpose=purpose,
        filename=f"{file_id}.jsonl",
        bytes=100,
        created_at=NOW,
        blob_key=f"inputs/{file_id}",
        expires_at=None,
    )


def batch_rec(batch_id: str, account: str = "alice", **changes: object) -> BatchRecord:
    record = BatchRecord(
        id=batch_id,
        account=account,
        endpoint=ENDPOINT,
        input_file_id="file-batch-in",
        completion_window="24h",
        created_at=NOW,
        expires_at=NOW + 86400,
    )
    return record.replace(**changes)


def request_lines(n: int) -> list[RequestLine]:
    return [
        RequestLine(line=i, custom_id=f"req-{i}", offset=(i - 1) * 50, length=49)
        for i in range(1, n + 1)
    ]


async def started(store: Store, batch_id: str, n: int = 5, **changes: object) -> BatchRecord:
    """A batch created, validated and in progress with ``n`` requests."""
    await store.create_batch(batch_rec(batch_id, **changes))
    claimed = await store.claim_validation("validator", time.time(), LEASE)
    assert claimed is not None and claimed.id == batch_id
    pricing = Pricing(0.8, 2.0, 0.5, "USD")
    assert await store.finish_validation(batch_id, "validator", request_lines(n), "m", pricing, NOW)
    batch = await store.get_batch(None, batch_id)
    assert batch is not None
    return batch


def done(claim: Claim, kind: str = SUCCEEDED, **changes: object) -> Outcome:
    fields: dict[str, object] = {"attempts": claim.attempts + 1}
    if kind == SUCCEEDED:
        fields |= {"status_code": 200, "body": b'{"ok":true}', "request_id": "r-1"}
        fields |= {"input_tokens": 10, "cached_tokens": 2, "output_tokens": 5}
        fields |= {"reasoning_tokens": 1}
    elif kind == FAILED:
        fields |= {"status_code": 400, "error_code": "bad", "error_message": "no"}
    fields |= changes
    fields.setdefault("custom_id", claim.custom_id)
    return Outcome(claim.batch_id, claim.line, claim.epoch, kind, **fields)  # type: ignore[arg-type]


class Row(NamedTuple):
    """A ResultRow with names, for the assertions."""

    line: int
    state: int
    custom_id: str | None  # only for a request without a result line
    result: bytes | None


async def results(store: Store, batch_id: str) -> list[Row]:
    rows: list[Row] = []
    async for chunk in store.iter_results(batch_id):
        rows.extend(Row(*r) for r in chunk)
    return rows


async def status_of(store: Store, batch_id: str) -> Status:
    batch = await store.get_batch(None, batch_id)
    assert batch is not None
    return batch.status


# --- files -----------------------------------------------------------------------------------


async def test_files_crud_and_accounts(store: Store) -> None:
    await store.create_file(file_rec("file-batch-a1"))
    await store.create_file(file_rec("file-batch-a2"))
    await store.create_file(file_rec("file-batch-b1", account="bob"))

    assert (await store.get_file("alice", "file-batch-a1")) == file_rec("file-batch-a1")
    assert await store.get_file("bob", "file-batch-a1") is None
    assert (await store.get_file(None, "file-batch-b1")) == file_rec("file-batch-b1", "bob")
    assert await store.get_file(None, "file-batch-nope") is None
    assert await store.file_usage("alice") == (2, 200)
    assert await store.file_usage("carol") == (0, 0)

    assert await store.delete_file("bob", "file-batch-a1") is None  # not bob's
    assert await store.delete_file("alice", "file-batch-a1") == file_rec("file-batch-a1")
    assert await store.get_file("alice", "file-batch-a1") is None
    assert await store.delete_file("alice", "file-batch-a1") is None
    assert await store.file_usage("alice") == (1, 100)


async def test_list_files_order_cursor_and_filters(store: Store) -> None:
    ids = [f"file-batch-{i}" for i in range(5)]
    for i, file_id in enumerate(ids):
        await store.create_file(file_rec(file_id, purpose="batch" if i % 2 == 0 else "other"))
    await store.create_file(file_rec("file-batch-bob", account="bob"))

    async def listed(**kw: object) -> list[str]:
        params: dict = {"purpose": None, "after": None, "limit": 100, "order": "desc"} | kw
        return [f.id for f in await store.list_files("alice", **params)]

    assert await listed() == ids[::-1]  # newest first, bob's file not among them
    assert await listed(order="asc") == ids
    assert await listed(limit=2) == [ids[4], ids[3]]
    assert await listed(after=ids[3]) == [ids[2], ids[1], ids[0]]
    assert await listed(after=ids[1], order="asc") == ids[2:]
    assert await listed(purpose="batch") == [ids[4], ids[2], ids[0]]
    assert await listed(purpose="batch", after=ids[4], limit=1) == [ids[2]]
    # An unknown cursor: nothing older (desc), everything (asc), as the SQLite store does.
    assert await listed(after="file-batch-unknown") == []
    assert await listed(after="file-batch-unknown", order="asc") == ids


# --- batches: control plane ------------------------------------------------------------------


async def test_batch_round_trip_and_accounts(store: Store) -> None:
    record = batch_rec(
        "batch_rt",
        metadata={"z_last": "1", "ds_name": "Nightly Run", "a_first": "2"},
        output_expires_after=3600,
        pricing=Pricing(0.8, 2.0, 0.5, "CNY"),
    )
    await store.create_batch(record)
    got = await store.get_batch("alice", "batch_rt")
    assert got == record
    assert got is not None and list(got.metadata or {}) == ["z_last", "ds_name", "a_first"]
    assert await store.get_batch("bob", "batch_rt") is None
    assert await store.get_batch(None, "batch_rt") == record
    assert await store.get_batch(None, "batch_nope") is None


async def test_list_batches_filters_and_cursor(store: Store) -> None:
    specs = [
        ("batch_0", "alice", {"metadata": {"ds_name": "Nightly ETL"}, "created_at": NOW - 300}),
        ("batch_1", "alice", {"metadata": {"ds_name": "adhoc"}, "created_at": NOW - 200}),
        ("batch_2", "bob", {"metadata": {"ds_name": "nightly"}, "created_at": NOW - 100}),
        ("batch_3", "alice", {"input_file_id": "file-batch-other", "created_at": NOW}),
    ]
    for batch_id, account, changes in specs:
        await store.create_batch(batch_rec(batch_id, account, **changes))
    await store.request_cancel("alice", "batch_1", NOW)

    async def listed(
        account: str | None = "alice", after: str | None = None, limit: int = 100, **flt: object
    ) -> list[str]:
        found = await store.list_batches(account, BatchFilter(**flt), after=after, limit=limit)  # type: ignore[arg-type]
        return [b.id for b in found]

    assert await listed() == ["batch_3", "batch_1", "batch_0"]
    assert await listed(None) == ["batch_3", "batch_2", "batch_1", "batch_0"]
    assert await listed(limit=1) == ["batch_3"]
    assert await listed(after="batch_3") == ["batch_1", "batch_0"]
    assert await listed(after="batch_1", limit=1) == ["batch_0"]
    assert await listed(statuses=(Status.CANCELLING,)) == ["batch_1"]
    assert await listed(statuses=(Status.CANCELLING, Status.VALIDATING)) == [
        "batch_3",
        "batch_1",
        "batch_0",
    ]
    assert await listed(name_contains="NIGHT") == ["batch_0"]  # case-insensitive substring
    assert await listed(None, name_contains="ightl") == ["batch_2", "batch_0"]
    assert await listed(input_file_ids=("file-batch-other", "x")) == ["batch_3"]
    assert await listed(created_after=NOW - 200) == ["batch_3", "batch_1"]
    assert await listed(created_before=NOW - 200) == ["batch_1", "batch_0"]
    assert await listed(not_before=NOW - 250) == ["batch_3", "batch_1"]
    assert await listed(name_contains="nightly", statuses=(Status.FAILED,)) == []


async def test_count_live_batches(store: Store) -> None:
    await started(store, "batch_live")
    await store.create_batch(batch_rec("batch_other_endpoint", endpoint="/v1/embeddings"))
    await store.create_batch(batch_rec("batch_bob", "bob"))
    assert await store.count_live_batches("alice", ENDPOINT) == 1
    claimed = await store.claim_validation("v", time.time(), LEASE)
    assert claimed is not None and claimed.id == "batch_other_endpoint"
    assert await store.fail_validation("batch_other_endpoint", "v", [], NOW)
    assert await store.count_live_batches("alice", "/v1/embeddings") == 0
    assert await store.count_live_batches("bob", ENDPOINT) == 1


async def test_cancel_transitions(store: Store) -> None:
    await store.create_batch(batch_rec("batch_v"))
    moved = await store.request_cancel("alice", "batch_v", NOW + 1)
    assert moved is not None
    assert (moved.status, moved.end_status, moved.cancelling_at) == (
        Status.CANCELLING,
        Status.CANCELLED,
        NOW + 1,
    )
    again = await store.request_cancel("alice", "batch_v", NOW + 2)
    assert again is not None and again.cancelling_at == NOW + 1  # already cancelling: as it is

    await started(store, "batch_p")
    moved = await store.request_cancel("alice", "batch_p", NOW)
    assert moved is not None and moved.status == Status.CANCELLING

    await store.create_batch(batch_rec("batch_f"))
    assert await store.claim_validation("v", time.time(), LEASE) is not None
    assert await store.fail_validation("batch_f", "v", [{"code": "x"}], NOW)
    kept = await store.request_cancel("alice", "batch_f", NOW)
    assert kept is not None and kept.status == Status.FAILED and kept.end_status is None

    assert await store.request_cancel("bob", "batch_p", NOW) is None
    assert await store.request_cancel("alice", "batch_missing", NOW) is None


# --- validation ------------------------------------------------------------------------------


async def test_validation_claim_lease_and_finish(store: Store) -> None:
    await store.create_batch(batch_rec("batch_a"))
    await store.create_batch(batch_rec("batch_b"))
    now = time.time()
    first = await store.claim_validation("w1", now, LEASE)
    second = await store.claim_validation("w2", now, LEASE)
    assert first is not None and first.id == "batch_a"  # oldest first
    assert second is not None and second.id == "batch_b"
    assert await store.claim_validation("w3", now, LEASE) is None  # both leased
    taken_over = await store.claim_validation("w3", now + LEASE + 1, LEASE)
    assert taken_over is not None and taken_over.id == "batch_a"  # w1's lease ran out

    pricing = Pricing(0.8, 2.0, 0.5, "USD")
    assert not await store.finish_validation("batch_a", "w1", request_lines(3), "m", pricing, NOW)
    assert await store.finish_validation("batch_a", "w3", request_lines(3), "m", pricing, NOW + 5)
    batch = await store.get_batch("alice", "batch_a")
    assert batch is not None
    assert (batch.status, batch.total, batch.model, batch.in_progress_at, batch.pricing) == (
        Status.IN_PROGRESS,
        3,
        "m",
        NOW + 5,
        pricing,
    )
    rows = await results(store, "batch_a")
    assert [(r.line, r.custom_id, r.state) for r in rows] == [
        (i, f"req-{i}", RequestState.PENDING) for i in (1, 2, 3)
    ]
    # Finished validation keeps no lease: nothing left to claim but batch_b (still w2's).
    assert await store.claim_validation("w4", now + 1, LEASE) is None


async def test_fail_validation(store: Store) -> None:
    await store.create_batch(batch_rec("batch_bad"))
    assert await store.claim_validation("w1", time.time(), LEASE) is not None
    errors = [{"code": "invalid_json_line", "message": "bad", "param": None, "line": 3}]
    assert not await store.fail_validation("batch_bad", "someone-else", errors, NOW)
    assert await store.fail_validation("batch_bad", "w1", errors, NOW + 1)
    batch = await store.get_batch("alice", "batch_bad")
    assert batch is not None
    assert (batch.status, batch.errors, batch.failed_at) == (Status.FAILED, errors, NOW + 1)
    assert not await store.fail_validation("batch_bad", "w1", errors, NOW + 2)


async def test_cancelled_while_validating_is_not_moved(store: Store) -> None:
    await store.create_batch(batch_rec("batch_c"))
    assert await store.claim_validation("w1", time.time(), LEASE) is not None
    await store.request_cancel("alice", "batch_c", NOW)
    pricing = Pricing()
    assert not await store.finish_validation("batch_c", "w1", request_lines(4), "m", pricing, NOW)
    batch = await store.get_batch("alice", "batch_c")
    assert batch is not None and batch.status == Status.CANCELLING and batch.total == 0
    assert await results(store, "batch_c") == []
    # Its lease was dropped: it can be finalised at once.
    assert await store.batches_to_finalize(time.time()) == ["batch_c"]


async def test_finish_validation_stores_fifty_thousand_rows(store: Store) -> None:
    await store.create_batch(batch_rec("batch_big"))
    assert await store.claim_validation("w", time.time(), LEASE) is not None
    lines = request_lines(50_000)
    assert await store.finish_validation("batch_big", "w", lines, "m", Pricing(), NOW)
    rows = await results(store, "batch_big")
    assert len(rows) == 50_000
    assert [r.line for r in rows] == list(range(1, 50_001))
    assert rows[-1].custom_id == "req-50000"


async def test_release_batch_lets_another_worker_try_at_once(store: Store) -> None:
    await store.create_batch(batch_rec("batch_rel"))
    now = time.time()
    assert await store.claim_validation("w1", now, LEASE) is not None
    await store.release_batch("batch_rel", "w2")  # not w2's lease: nothing happens
    assert await store.claim_validation("w2", now, LEASE) is None
    await store.release_batch("batch_rel", "w1")
    again = await store.claim_validation("w2", now, LEASE)
    assert again is not None and again.id == "batch_rel"


# --- dispatch: claims, fencing, retries ------------------------------------------------------


async def test_claims_in_line_order_never_twice(store: Store) -> None:
    await started(store, "batch_q", n=7)
    now = time.time()
    first = await store.claim_requests("batch_q", "w1", 3, now, LEASE)
    second = await store.claim_requests("batch_q", "w2", 3, now, LEASE)
    third = await store.claim_requests("batch_q", "w1", 3, now, LEASE)
    assert [c.line for c in first] == [1, 2, 3]
    assert [c.line for c in second] == [4, 5, 6]
    assert [c.line for c in third] == [7]
    assert await store.claim_requests("batch_q", "w2", 3, now, LEASE) == []
    assert first[0] == Claim("batch_q", 1, "req-1", 0, 49, 0, 1)


async def test_active_batches_earliest_deadline_first(store: Store) -> None:
    await store.create_file(file_rec("file-batch-in"))
    await started(store, "batch_late", expires_at=NOW + 9000)
    await started(store, "batch_soon", expires_at=NOW + 100)
    await store.create_batch(batch_rec("batch_waiting"))
    active = await store.active_batches()
    assert [b.id for b in active] == ["batch_soon", "batch_late"]
    assert active[0].input_blob_key == "inputs/file-batch-in"
    assert (active[0].model, active[0].endpoint, active[0].expires_at) == ("m", ENDPOINT, NOW + 100)


async def test_outcomes_update_rows_counters_and_report_finished(store: Store) -> None:
    await started(store, "batch_o", n=3)
    claims = await store.claim_requests("batch_o", "w", 3, time.time(), LEASE)
    finished = await store.record_outcomes([done(claims[0]), done(claims[1], FAILED)], NOW)
    assert finished == []
    batch = await store.get_batch(None, "batch_o")
    assert batch is not None
    assert (batch.completed, batch.failed) == (1, 1)
    assert batch.usage == Usage(10, 2, 5, 1)  # only the 2xx line is billed
    assert await store.record_outcomes([done(claims[2])], NOW) == ["batch_o"]
    rows = await results(store, "batch_o")
    assert [(r.line, r.state) for r in rows] == [
        (1, RequestState.SUCCEEDED),
        (2, RequestState.FAILED),
        (3, RequestState.SUCCEEDED),
    ]
    # Each row keeps the result line rendered when its outcome was recorded.
    first, second = (orjson.loads(r.result or b"") for r in rows[:2])
    assert first["custom_id"] == "req-1" and first["error"] is None
    assert first["response"] == {"status_code": 200, "request_id": "r-1", "body": {"ok": True}}
    assert second["response"]["status_code"] == 400
    assert second["error"] == {"code": "bad", "message": "no"}
    assert await store.record_outcomes([], NOW) == []


async def test_stale_epoch_changes_nothing(store: Store) -> None:
    await started(store, "batch_f", n=2)
    now = time.time()
    old = await store.claim_requests("batch_f", "w1", 2, now, LEASE)
    # w1 stalls; its leases run out and w2 takes the requests over (a new epoch each).
    assert await store.reclaim_expired_leases(now + LEASE + 1) == 2
    new = await store.claim_requests("batch_f", "w2", 2, now + LEASE + 1, LEASE)
    assert [c.epoch for c in new] == [c.epoch + 1 for c in old]

    assert await store.record_outcomes([done(c) for c in old], NOW) == []
    batch = await store.get_batch(None, "batch_f")
    assert batch is not None and (batch.completed, batch.failed, batch.usage) == (0, 0, Usage())
    assert {r.state for r in await results(store, "batch_f")} == {RequestState.LEASED}

    # The current owner's results apply; the same outcome twice in one group counts once.
    group = [done(new[0]), done(new[0]), done(new[1], FAILED), done(old[1])]
    assert await store.record_outcomes(group, NOW) == ["batch_f"]
    batch = await store.get_batch(None, "batch_f")
    assert batch is not None and (batch.completed, batch.failed) == (1, 1)
    assert batch.usage == Usage(10, 2, 5, 1)
    # Late duplicates of results already recorded do nothing either.
    assert await store.record_outcomes([done(new[0]), done(new[1])], NOW) == []
    batch = await store.get_batch(None, "batch_f")
    assert batch is not None and (batch.completed, batch.failed) == (1, 1)


async def test_large_group_applies_each_current_outcome_once(store: Store) -> None:
    # More outcomes than one statement of a group commit takes, one of them stale: the others
    # apply, each once, and only they count.
    n = 150
    await started(store, "batch_g", n=n)
    now = time.time()
    old = await store.claim_requests("batch_g", "w1", n, now, LEASE)
    assert await store.reclaim_expired_leases(now + LEASE + 1) == n
    new = await store.claim_requests("batch_g", "w2", n, now + LEASE + 1, LEASE)
    group = [done(c, FAILED if c.line % 10 == 0 else SUCCEEDED) for c in new]
    group[99] = done(old[99])  # line 100: w1's result, from a lease it lost
    assert await store.record_outcomes(group, NOW) == []
    batch = await store.get_batch(None, "batch_g")
    assert batch is not None and (batch.completed, batch.failed) == (135, 14)
    assert batch.usage == Usage(1350, 270, 675, 135)
    states = {r.line: r.state for r in await results(store, "batch_g")}
    assert states[100] == RequestState.LEASED
    assert states[10] == RequestState.FAILED and states[149] == RequestState.SUCCEEDED
    assert await store.record_outcomes([done(new[99])], NOW) == ["batch_g"]


async def test_retry_waits_for_not_before_and_counts_attempts(store: Store) -> None:
    await started(store, "batch_r", n=2)
    now = time.time()
    claims = await store.claim_requests("batch_r", "w", 2, now, LEASE)
    retry = done(claims[0], RETRY, not_before=now + 30, attempts=1)
    assert await store.record_outcomes([retry], NOW) == []
    batch = await store.get_batch(None, "batch_r")
    assert batch is not None and (batch.completed, batch.failed) == (0, 0)
    assert await store.next_retry_at() == pytest.approx(now + 30)
    assert await store.claim_requests("batch_r", "w", 5, now + 29, LEASE) == []
    again = await store.claim_requests("batch_r", "w", 5, now + 31, LEASE)
    assert [(c.line, c.attempts, c.epoch) for c in again] == [(1, 1, 2)]
    assert await store.next_retry_at() is None
    await store.record_outcomes([done(again[0], attempts=2), done(claims[1])], NOW)
    rows = await results(store, "batch_r")
    assert [r.state for r in rows] == [RequestState.SUCCEEDED] * 2


async def test_heartbeat_keeps_leases_and_reclaim_frees_expired(store: Store) -> None:
    await started(store, "batch_h", n=4)
    now = time.time()
    mine = await store.claim_requests("batch_h", "w1", 2, now, LEASE)
    theirs = await store.claim_requests("batch_h", "w2", 2, now, LEASE)
    await store.heartbeat("w1", now + 3 * LEASE)  # w1 lives on, w2 went quiet
    assert await store.reclaim_expired_leases(now + 2 * LEASE) == 2
    reclaimed = await store.claim_requests("batch_h", "w3", 5, now + 2 * LEASE, LEASE)
    assert [c.line for c in reclaimed] == [c.line for c in theirs]
    assert await store.reclaim_expired_leases(now + 2 * LEASE) == 0
    assert await store.record_outcomes([done(c) for c in mine + reclaimed], NOW) == ["batch_h"]


async def test_release_leases(store: Store) -> None:
    await started(store, "batch_l", n=4)
    now = time.time()
    await store.claim_requests("batch_l", "w1", 1, now, LEASE)
    await store.claim_requests("batch_l", "w2", 2, now, LEASE)
    assert await store.release_leases("w2") == 2
    assert [c.line for c in await store.claim_requests("batch_l", "w3", 9, now, LEASE)] == [2, 3, 4]
    assert await store.release_leases(None) == 4  # every lease (exclusive start-up only)
    assert len(await store.claim_requests("batch_l", "w4", 9, now, LEASE)) == 4


async def test_rate_limit_counts_per_key_and_minute(store: Store) -> None:
    assert [await store.rate_limit_hit("alice:create", 100, 0.0) for _ in range(3)] == [1, 2, 3]
    assert await store.rate_limit_hit("bob:create", 100, 0.0) == 1
    assert await store.rate_limit_hit("alice:create", 101, 0.0) == 1
    assert await store.rate_limit_hit("alice:create", 100, 0.0) == 4


# --- expiry, cancel and finalisation ---------------------------------------------------------


async def test_completed_batch_is_finalized_once(store: Store) -> None:
    await started(store, "batch_done", n=3)
    now = time.time()
    claims = await store.claim_requests("batch_done", "w", 3, now, LEASE)
    assert await store.batches_to_finalize(now) == []
    await store.record_outcomes([done(claims[0]), done(claims[1], FAILED), done(claims[2])], NOW)
    assert await store.batches_to_finalize(now) == ["batch_done"]

    batch = await store.claim_finalization("batch_done", "f1", now, LEASE)
    assert batch is not None
    assert (batch.status, batch.end_status, batch.finalizing_at) == (
        Status.FINALIZING,
        Status.COMPLETED,
        int(now),
    )
    assert await store.claim_finalization("batch_done", "f2", now, LEASE) is None
    assert await store.batches_to_finalize(now) == []  # leased by f1

    rows = await results(store, "batch_done")
    assert [(r.line, r.state) for r in rows] == [
        (1, RequestState.SUCCEEDED),
        (2, RequestState.FAILED),
        (3, RequestState.SUCCEEDED),
    ]
    assert [orjson.loads(r.result or b"")["custom_id"] for r in rows] == ["req-1", "req-2", "req-3"]
    output = file_rec("file-batch_output-1", purpose="batch_output")
    error = file_rec("file-batch_error-1", purpose="batch_output")
    assert not await store.finish_finalization(
        "batch_done", "f2", Status.COMPLETED, [output, error], None, None, NOW
    )
    assert await store.get_file(None, output.id) is None
    assert await store.finish_finalization(
        "batch_done", "f1", Status.COMPLETED, [output, error], None, None, NOW + 7
    )
    final = await store.get_batch("alice", "batch_done")
    assert final is not None
    assert (final.status, final.completed_at, final.completed, final.failed) == (
        Status.COMPLETED,
        NOW + 7,
        2,
        1,
    )
    assert (final.output_file_id, final.error_file_id) == (output.id, error.id)
    assert await store.get_file("alice", output.id) == output
    assert await store.get_file("alice", error.id) == error
    assert await store.batches_to_finalize(time.time()) == []
    assert await store.claim_finalization("batch_done", "f3", time.time(), LEASE) is None


async def test_finalization_taken_over_after_its_lease_runs_out(store: Store) -> None:
    await started(store, "batch_t", n=1)
    now = time.time()
    claims = await store.claim_requests("batch_t", "w", 1, now, LEASE)
    await store.record_outcomes([done(claims[0])], NOW)
    assert await store.claim_finalization("batch_t", "f1", now, LEASE) is not None
    assert await store.batches_to_finalize(now + LEASE + 1) == ["batch_t"]
    assert await store.claim_finalization("batch_t", "f2", now + LEASE + 1, LEASE) is not None
    assert not await store.finish_finalization(
        "batch_t", "f1", Status.COMPLETED, [], None, None, NOW
    )
    assert await store.finish_finalization("batch_t", "f2", Status.COMPLETED, [], None, None, NOW)
    assert await status_of(store, "batch_t") == Status.COMPLETED


async def test_cancelled_batch_waits_for_in_flight_then_fails_the_rest(store: Store) -> None:
    await started(store, "batch_x", n=5)
    now = time.time()
    claims = await store.claim_requests("batch_x", "w", 2, now, LEASE)
    await store.record_outcomes([done(claims[0])], NOW)
    await store.request_cancel("alice", "batch_x", NOW)
    assert await store.batches_to_finalize(now) == []  # line 2 is still in flight
    assert await store.batches_to_finalize(now + LEASE + 1) == ["batch_x"]  # ...or dead
    await store.record_outcomes([done(claims[1], FAILED)], NOW)
    assert await store.batches_to_finalize(now) == ["batch_x"]

    batch = await store.claim_finalization("batch_x", "f", now, LEASE)
    assert batch is not None
    assert (batch.status, batch.end_status) == (Status.CANCELLING, Status.CANCELLED)
    assert await store.finish_finalization(
        "batch_x", "f", Status.CANCELLED, [], "batch_cancelled", "Cancelled.", NOW + 3
    )
    final = await store.get_batch("alice", "batch_x")
    assert final is not None
    assert (final.status, final.cancelled_at, final.completed, final.failed, final.total) == (
        Status.CANCELLED,
        NOW + 3,
        1,
        4,
        5,
    )
    assert final.output_file_id is None and final.error_file_id is None
    rows = await results(store, "batch_x")
    # Lines that never ran are failed; their lines were rendered by the finaliser, not stored.
    assert [(r.state, r.result) for r in rows[2:]] == [(RequestState.FAILED, None)] * 3


async def test_expiry(store: Store) -> None:
    await started(store, "batch_run", n=2, expires_at=NOW + 20)
    await started(store, "batch_later", n=1, expires_at=NOW + 1000)
    await store.create_batch(batch_rec("batch_val", expires_at=NOW + 10))
    await store.create_batch(batch_rec("batch_cxl", expires_at=NOW + 10))
    await store.request_cancel("alice", "batch_cxl", NOW)

    assert await store.expire_due(NOW + 5) == []
    assert sorted(await store.expire_due(NOW + 20)) == ["batch_run", "batch_val"]
    assert await store.expire_due(NOW + 20) == []  # once
    for batch_id in ("batch_val", "batch_run"):
        batch = await store.get_batch(None, batch_id)
        assert batch is not None
        assert (batch.status, batch.end_status, batch.finalizing_at) == (
            Status.FINALIZING,
            Status.EXPIRED,
            NOW + 20,
        )
    assert await status_of(store, "batch_cxl") == Status.CANCELLING
    assert await status_of(store, "batch_later") == Status.IN_PROGRESS

    ready = await store.batches_to_finalize(time.time())
    assert "batch_run" in ready and "batch_val" in ready
    batch = await store.claim_finalization("batch_run", "f", time.time(), LEASE)
    assert batch is not None and batch.end_status == Status.EXPIRED
    assert await store.finish_finalization(
        "batch_run", "f", Status.EXPIRED, [], "batch_expired", "Expired.", NOW + 21
    )
    final = await store.get_batch(None, "batch_run")
    assert final is not None
    assert (final.status, final.expired_at, final.failed) == (Status.EXPIRED, NOW + 21, 2)


# --- fleet: several processes on one database (PostgreSQL) -----------------------------------


@pytest.fixture
async def fleet(pg_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two processes' stores on one fresh database."""
    stores = [open_store(pg_url), open_store(pg_url)]
    for s in stores:
        await s.open()
    yield stores[0], stores[1]
    for s in stores:
        await s.close()


@pytest.mark.postgres
async def test_concurrent_claimers_never_share_a_request(fleet: tuple[Store, Store]) -> None:
    store, second = fleet
    await started(store, "batch_cc", n=2000)

    async def worker(s: Store, owner: str) -> list[int]:
        got: list[int] = []
        while claims := await s.claim_requests("batch_cc", owner, 37, time.time(), LEASE):
            got.extend(c.line for c in claims)
            await s.record_outcomes([done(c) for c in claims], NOW)
        return got

    owners = [(s, f"w{i}-{n}") for n, s in enumerate((store, second)) for i in range(3)]
    lines = await asyncio.gather(*(worker(s, owner) for s, owner in owners))
    every = [line for got in lines for line in got]
    assert sorted(every) == list(range(1, 2001))  # each once
    assert sum(1 for got in lines if got) > 1  # the work was really shared
    batch = await store.get_batch(None, "batch_cc")
    assert batch is not None and (batch.completed, batch.failed) == (2000, 0)
    assert batch.usage == Usage(20000, 4000, 10000, 2000)


@pytest.mark.postgres
async def test_concurrent_commits_to_several_batches_add_up(fleet: tuple[Store, Store]) -> None:
    store, second = fleet
    # Groups that span two batches, committed from two processes at once, with heartbeats
    # running meanwhile: counters add up exactly (and no deadlock escapes as an error).
    await started(store, "batch_m1", n=600)
    await started(store, "batch_m2", n=600)

    async def worker(s: Store, owner: str) -> None:
        while True:
            claims = [
                *await s.claim_requests("batch_m1", owner, 25, time.time(), LEASE),
                *await s.claim_requests("batch_m2", owner, 25, time.time(), LEASE),
            ]
            if not claims:
                return
            random.shuffle(claims)
            await asyncio.gather(
                s.record_outcomes([done(c) for c in claims], NOW),
                s.heartbeat(owner, time.time() + LEASE),
            )

    await asyncio.gather(*(worker(s, f"{i}") for i, s in enumerate((store, second, store))))
    for batch_id in ("batch_m1", "batch_m2"):
        batch = await store.get_batch(None, batch_id)
        assert batch is not None and (batch.completed, batch.usage.input_tokens) == (600, 6000)


@pytest.mark.postgres
async def test_validation_and_finalization_happen_once_across_workers(
    fleet: tuple[Store, Store],
) -> None:
    store, second = fleet
    for i in range(4):
        await store.create_batch(batch_rec(f"batch_v{i}"))
    now = time.time()
    claimed = await asyncio.gather(
        *(s.claim_validation(f"w{i}", now, LEASE) for i, s in enumerate([store, second] * 4))
    )
    ids = [b.id for b in claimed if b is not None]
    assert sorted(ids) == [f"batch_v{i}" for i in range(4)]

    await started(store, "batch_fin", n=1)
    claims = await store.claim_requests("batch_fin", "w", 1, now, LEASE)
    await store.record_outcomes([done(claims[0])], NOW)
    won = await asyncio.gather(
        *(
            s.claim_finalization("batch_fin", f"f{i}", now, LEASE)
            for i, s in enumerate([store, second] * 4)
        )
    )
    assert sum(b is not None for b in won) == 1


@pytest.mark.postgres
async def test_a_transaction_that_loses_a_deadlock_is_tried_again(
    fleet: tuple[Store, Store],
) -> None:
    store = fleet[0]
    assert isinstance(store, postgres.PostgresStore)
    await store.rate_limit_hit("a", 1, 0.0)
    await store.rate_limit_hit("b", 1, 0.0)
    both_hold_one = asyncio.Barrier(2)
    attempts: Counter[str] = Counter()

    async def crosswise(first: str, second: str) -> None:
        async def body(conn: Any) -> None:
            attempts[first] += 1
            bump = "UPDATE rate_limits SET count = count + 1 WHERE key = $1"
            await conn.execute(bump, first)
            if attempts[first] == 1:
                await both_hold_one.wait()  # each holds one row and wants the other's
            await conn.execute(bump, second)

        await store._run(body)

    await asyncio.gather(crosswise("a", "b"), crosswise("b", "a"))
    assert sorted(attempts.values()) == [1, 2]  # PostgreSQL broke the deadlock; it was retried
    assert await store.rate_limit_hit("a", 1, 0.0) == 4  # 1 + both transactions + this hit
    assert await store.rate_limit_hit("b", 1, 0.0) == 4


async def test_slots_never_exceed_the_limit(store: Store) -> None:
    now = time.time()
    a = await store.acquire_slots("gpu", "A", 3, 5, now, LEASE)
    b = await store.acquire_slots("gpu", "B", 5, 5, now, LEASE)
    c = await store.acquire_slots("gpu", "C", 1, 5, now, LEASE)
    assert (a, b, c) == (3, 2, 0)
    assert await store.acquire_slots("gpu", "A", 1, 5, now, LEASE) == 1  # gives two back
    # C stops asking (while it waits, B gets no more than a fair share: test_store_slots).
    assert await store.acquire_slots("gpu", "C", 0, 5, now, LEASE) == 0
    assert await store.acquire_slots("gpu", "B", 5, 5, now, LEASE) == 4
    assert await store.acquire_slots("gpu", "A", 1, 5, now, LEASE) == 1  # renewal
    assert await store.acquire_slots("other", "C", 2, 2, now, LEASE) == 2  # another backend
    # A dies: once its lease runs out, C gets its slot (B renews in time and keeps its own).
    later = now + LEASE + 1
    assert await store.acquire_slots("gpu", "B", 4, 5, now + LEASE - 1, LEASE) == 4
    assert await store.acquire_slots("gpu", "C", 5, 5, later, LEASE) == 1
    assert await store.acquire_slots("gpu", "B", 0, 5, later, LEASE) == 0  # stops: all back
    assert await store.acquire_slots("gpu", "C", 5, 5, later, LEASE) == 5
    # A lowered ceiling takes effect at once.
    assert await store.acquire_slots("gpu", "C", 5, 2, later, LEASE) == 2


@pytest.mark.postgres
async def test_slots_under_contention(fleet: tuple[Store, Store]) -> None:
    store, second = fleet
    limit, rng = 7, random.Random(5)
    held: dict[str, int] = {}
    for _ in range(30):
        now = time.time()
        owners = {f"o{i}": (store, second)[i % 2] for i in range(5)}
        wants = {owner: rng.randint(0, limit) for owner in owners}
        got = await asyncio.gather(
            *(s.acquire_slots("be", o, wants[o], limit, now, LEASE) for o, s in owners.items())
        )
        held.update(zip(owners, got, strict=True))
        assert all(0 <= n <= wants[o] for o, n in zip(owners, got, strict=True))
        assert sum(held.values()) <= limit


@pytest.mark.postgres
async def test_notify_wakes_other_processes_and_survives_a_lost_connection(
    fleet: tuple[Store, Store], pg_url: str
) -> None:
    store, second = fleet
    woken = asyncio.Event()
    await store.subscribe(woken.set)
    await second.notify()
    await asyncio.wait_for(woken.wait(), timeout=30)
    woken.clear()

    # The listening connection dies (a restarted server, a cut network). It comes back, and
    # wakes its subscribers once at once, since what was sent meanwhile is lost...
    admin = await asyncpg.connect(pg_url)
    try:
        killed = await admin.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
    finally:
        await admin.close()
    assert killed == 1
    await asyncio.wait_for(woken.wait(), timeout=30)
    woken.clear()
    # ...and hears the next notification.
    await second.notify()
    await asyncio.wait_for(woken.wait(), timeout=30)
