"""The batch controls in the ``Store`` contract, on SQLite and PostgreSQL alike: priority and
caps kept, pause and resume, caps that stop a batch in the group commit (and the SQL rule
equal to ``lowtide.domain.controls.cap_crossed``), stop, results after a line, failed lines,
a retry's file and batch in one transaction, and the pace marks."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from lowtide.domain import controls, pace
from lowtide.domain.accounts import IdempotencyClaim
from lowtide.domain.records import Usage
from lowtide.domain.status import Status
from lowtide.domain.work import FAILED, RETRY, Claim
from lowtide.store import Store
from tests.integration.test_store import (
    LEASE,
    NOW,
    batch_rec,
    done,
    file_rec,
    results,
    started,
    status_of,
)


async def claim(store: Store, batch_id: str, n: int) -> list[Claim]:
    claims = await store.claim_requests(batch_id, "w", n, time.time(), LEASE)
    assert len(claims) == n
    return claims


async def test_priority_and_caps_are_kept(store: Store) -> None:
    await store.create_batch(batch_rec("batch_p", priority=-7, max_cost=1.5, max_error_rate=0.2))
    batch = await store.get_batch("alice", "batch_p")
    assert batch is not None
    assert (batch.priority, batch.max_cost, batch.max_error_rate) == (-7, 1.5, 0.2)
    assert batch.stop_reason is None and batch.paused_at is None


async def test_a_cancel_says_cancelled_by_user(store: Store) -> None:
    await started(store, "batch_c")
    batch = await store.request_cancel("alice", "batch_c", NOW)
    assert batch is not None and batch.status == Status.CANCELLING
    assert batch.stop_reason == controls.CANCELLED_BY_USER


async def test_pause_and_resume(store: Store) -> None:
    await started(store, "batch_a")
    await started(store, "batch_b")
    paused = await store.pause_batch("alice", "batch_a", NOW)
    assert paused is not None and paused.paused_at == NOW
    assert [b.id for b in await store.active_batches()] == ["batch_b"]
    assert await store.claim_requests("batch_b", "w", 1, time.time(), LEASE)
    again = await store.pause_batch("alice", "batch_a", NOW + 5)
    assert again is not None and again.paused_at == NOW  # the first pause holds
    assert await store.pause_batch("bob", "batch_a", NOW) is None  # another account's
    resumed = await store.resume_batch("alice", "batch_a", NOW + 300)
    assert resumed is not None and resumed.paused_at is None
    assert {b.id for b in await store.active_batches()} == {"batch_a", "batch_b"}
    # Its pace is counted afresh from the resume: the paused time is not a slow pace.
    assert (resumed.pace_at, resumed.pace_prev_at) == (NOW + 300, 0)
    assert resumed.pace_done == resumed.completed + resumed.failed
    # Resuming a batch that is not paused changes nothing (its pace included).
    again = await store.resume_batch("alice", "batch_a", NOW + 400)
    assert again is not None and again.pace_at == NOW + 300


async def test_pause_leaves_a_batch_not_in_progress_as_it_is(store: Store) -> None:
    await store.create_batch(batch_rec("batch_v"))
    batch = await store.pause_batch("alice", "batch_v", NOW)
    assert batch is not None and batch.status == Status.VALIDATING and batch.paused_at is None
    batch = await store.resume_batch("alice", "batch_v", NOW)
    assert batch is not None and batch.status == Status.VALIDATING


async def test_max_cost_stops_the_batch_in_the_group_commit(store: Store) -> None:
    # Each line costs (10 * 0.8 + 5 * 2.0) * 0.5 / 1e6 = 9e-6: the third one reaches 2.5e-5.
    await started(store, "batch_m", n=6, max_cost=2.5e-5)
    claims = await claim(store, "batch_m", 4)
    await store.record_outcomes([done(c) for c in claims[:2]], NOW + 1)
    assert await status_of(store, "batch_m") == Status.IN_PROGRESS
    await store.record_outcomes([done(claims[2])], NOW + 2)
    batch = await store.get_batch(None, "batch_m")
    assert batch is not None
    assert (batch.status, batch.end_status) == (Status.CANCELLING, Status.CANCELLED)
    assert (batch.stop_reason, batch.cancelling_at) == (controls.MAX_COST, NOW + 2)
    assert [b.id for b in await store.active_batches()] == []  # nothing more is claimed
    # A request in flight at the stop finishes and is billed as usual.
    await store.record_outcomes([done(claims[3])], NOW + 3)
    batch = await store.get_batch(None, "batch_m")
    assert batch is not None and batch.completed == 4 and batch.usage.input_tokens == 40
    assert batch.stop_reason == controls.MAX_COST


async def test_max_error_rate_is_judged_from_100_lines(store: Store) -> None:
    await started(store, "batch_e", n=150, max_error_rate=0.1)
    claims = await claim(store, "batch_e", 110)
    # 99 lines ended, 20 of them failed: not judged yet.
    group = [done(c, FAILED) for c in claims[:20]] + [done(c) for c in claims[20:99]]
    await store.record_outcomes(group, NOW)
    assert await status_of(store, "batch_e") == Status.IN_PROGRESS
    await store.record_outcomes([done(claims[99])], NOW + 1)
    batch = await store.get_batch(None, "batch_e")
    assert batch is not None and batch.status == Status.CANCELLING
    assert batch.stop_reason == controls.MAX_ERROR_RATE


async def test_a_batch_whose_every_line_ended_is_not_stopped(store: Store) -> None:
    await started(store, "batch_z", n=2, max_cost=1e-9)
    claims = await claim(store, "batch_z", 2)
    assert await store.record_outcomes([done(c) for c in claims], NOW) == ["batch_z"]
    assert await status_of(store, "batch_z") == Status.IN_PROGRESS  # finalised as completed


async def test_a_retry_or_a_cancelled_batch_is_not_stopped(store: Store) -> None:
    await started(store, "batch_r", n=3, max_cost=1e-9)
    claims = await claim(store, "batch_r", 2)
    retry = done(claims[0], RETRY, not_before=0.0)
    await store.record_outcomes([retry], NOW)
    assert await status_of(store, "batch_r") == Status.IN_PROGRESS  # nothing billed yet
    await store.request_cancel("alice", "batch_r", NOW)
    await store.record_outcomes([done(claims[1])], NOW)
    batch = await store.get_batch(None, "batch_r")
    assert batch is not None and batch.stop_reason == controls.CANCELLED_BY_USER


@pytest.mark.parametrize(
    ("max_cost", "max_error_rate", "ok", "failed"),
    [
        (None, None, 90, 60),
        (4.5e-4, None, 50, 0),  # 50 lines cost 4.5e-4 exactly: reached
        (4.6e-4, None, 50, 0),
        (None, 0.5, 60, 60),  # half failed: not more than half
        (None, 0.5, 59, 61),
        (None, 0.0, 119, 1),
        (1.0, 0.4, 70, 50),
    ],
)
async def test_the_sql_rule_is_cap_crossed(
    store: Store, max_cost: float | None, max_error_rate: float | None, ok: int, failed: int
) -> None:
    await started(store, "batch_x", n=200, max_cost=max_cost, max_error_rate=max_error_rate)
    claims = await claim(store, "batch_x", ok + failed)
    outcomes = [done(c) for c in claims[:ok]] + [done(c, FAILED) for c in claims[ok:]]
    await store.record_outcomes(outcomes, NOW)
    after = await store.get_batch(None, "batch_x")
    assert after is not None
    # The same counters on a batch still in progress, as the rule sees them.
    seen = replace(after, status=Status.IN_PROGRESS)
    assert seen.usage == Usage(10 * ok, 2 * ok, 5 * ok, ok)
    expected = controls.cap_crossed(seen)
    assert after.stop_reason == expected
    assert after.status == (Status.CANCELLING if expected else Status.IN_PROGRESS)


async def test_stop_batch(store: Store) -> None:
    await started(store, "batch_s")
    assert await store.stop_batch("batch_s", "upstream_gone", NOW)
    batch = await store.get_batch(None, "batch_s")
    assert batch is not None and batch.status == Status.CANCELLING
    assert batch.stop_reason == "upstream_gone"
    assert not await store.stop_batch("batch_s", "again", NOW)  # already stopping


async def test_results_after_a_line_and_the_marks(store: Store) -> None:
    await started(store, "batch_r", n=6)
    claims = await claim(store, "batch_r", 6)
    await store.record_outcomes([done(claims[0]), done(claims[1], FAILED), done(claims[4])], NOW)
    assert await store.result_marks("batch_r", 0) == controls.ResultMarks(3, 5, 2)
    assert await store.result_marks("batch_r", 2) == controls.ResultMarks(3, 5, None)
    assert [r.line for r in await results(store, "batch_r")] == [1, 2, 3, 4, 5, 6]
    rows = []
    async for chunk in store.iter_results("batch_r", after=4):
        rows.extend(chunk)
    assert [r[0] for r in rows] == [5, 6]
    await store.record_outcomes([done(c) for c in claims[2:4] + claims[5:]], NOW)
    assert await store.result_marks("batch_r", 0) == controls.ResultMarks(None, 6, 2)


async def test_failed_requests_in_line_order(store: Store) -> None:
    await started(store, "batch_f", n=5)
    claims = await claim(store, "batch_f", 5)
    no_code = done(claims[3], FAILED, error_code=None, status_code=502)
    await store.record_outcomes(
        [done(claims[0]), done(claims[1], FAILED), no_code, done(claims[2])], NOW
    )
    found = [r async for chunk in store.failed_requests("batch_f") for r in chunk]
    assert found == [
        controls.FailedRequest(2, 50, 49, "bad"),
        controls.FailedRequest(4, 150, 49, "http_502"),
    ]


async def test_create_retry_once_per_key(store: Store) -> None:
    claim_key = IdempotencyClaim("alice", "retry", "k1", "fp", '{"id": "batch_n1"}', NOW, 0)
    new_file, new_batch = file_rec("file-batch-n1"), batch_rec("batch_n1")
    assert await store.create_retry(new_file, new_batch, claim_key) is None
    held = await store.create_retry(
        file_rec("file-batch-n2"), batch_rec("batch_n2"), replace(claim_key, response="{}")
    )
    assert held is not None and held.fingerprint == "fp"
    assert await store.get_batch("alice", "batch_n1") is not None
    assert await store.get_file("alice", "file-batch-n1") is not None
    assert await store.get_batch("alice", "batch_n2") is None
    assert await store.get_file("alice", "file-batch-n2") is None


async def test_pace_marks_move_with_the_commits(store: Store) -> None:
    batch = await started(store, "batch_t", n=10)
    assert batch.pace_at == NOW  # the batch started at NOW (finish_validation)
    claims = await claim(store, "batch_t", 6)
    await store.record_outcomes([done(claims[0]), done(claims[1])], NOW + 30)
    batch = await store.get_batch(None, "batch_t")
    assert batch is not None and (batch.pace_at, batch.pace_prev_at) == (NOW, 0)
    await store.record_outcomes([done(claims[2])], NOW + 61)
    batch = await store.get_batch(None, "batch_t")
    assert batch is not None
    assert (batch.pace_prev_at, batch.pace_prev_done) == (NOW, 0)
    assert (batch.pace_at, batch.pace_done) == (NOW + 61, 3)
    await store.record_outcomes([done(c) for c in claims[3:6]], NOW + 130)
    batch = await store.get_batch(None, "batch_t")
    assert batch is not None
    assert (batch.pace_prev_at, batch.pace_prev_done, batch.pace_at) == (NOW + 61, 3, NOW + 130)
    # 3 lines since the older mark, 69 seconds ago at the last commit.
    assert pace.batch_per_second(batch, NOW + 130) == pytest.approx(3 / 69)
    found = await store.model_paces("m", NOW + 100)
    assert [(r.status, r.done, r.counted_at) for r in found] == [("in_progress", 6, NOW + 130)]
    assert await store.model_paces("m", NOW + 131) == []
