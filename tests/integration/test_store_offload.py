"""The store's offload chunks, on SQLite and PostgreSQL alike: a chunk holds its requests apart
from every worker's leases (no reclaim, release or dispatcher takes them), its own lease is
fenced by an epoch and taken over when it runs out, the outcomes it records are fenced by each
request's epoch, and what ran where is read back from the requests themselves."""

from __future__ import annotations

import time

from lowtide.domain.offload import CLAIMED, CLEANING, HELD_UNTIL, RUNNING, Chunk, holder
from lowtide.domain.records import BatchRecord, Pricing
from lowtide.domain.status import Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Outcome
from lowtide.store import Store

NOW = int(time.time())
LEASE = 60.0


async def started(store: Store, batch_id: str, lines: int) -> None:
    record = BatchRecord(
        id=batch_id,
        account="alice",
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        completion_window="48h",
        created_at=NOW,
        expires_at=NOW + 2 * 86400,
    )
    await store.create_batch(record)
    claimed = await store.claim_validation("validator", time.time(), LEASE)
    assert claimed is not None
    requests = [RequestLine(n, f"c{n}", (n - 1) * 100, 90 + n) for n in range(1, lines + 1)]
    pricing = Pricing(1.0, 2.0, 0.5, "USD")
    assert await store.finish_validation(batch_id, "validator", requests, "m", pricing, NOW)


def new_chunk(chunk_id: str, batch_id: str, owner: str = "w1", backend: str = "hosted") -> Chunk:
    now = time.time()
    return Chunk(
        id=chunk_id,
        batch_id=batch_id,
        backend=backend,
        state=CLAIMED,
        lines=0,
        price_factor=1.0,
        window="24h",
        created_at=now,
        lease_owner=owner,
        lease_epoch=1,
        lease_until=now + LEASE,
        updated_at=now,
    )


def final(batch_id: str, line: int, epoch: int, kind: str, tokens: int = 0) -> Outcome:
    return Outcome(
        batch_id,
        line,
        epoch,
        kind,
        custom_id=f"c{line}",
        attempts=1,
        status_code=200 if kind == SUCCEEDED else 400,
        body=b"{}",
        input_tokens=tokens,
        error_code=None if kind == SUCCEEDED else "bad",
        not_before=time.time(),
    )


async def test_a_chunk_holds_its_lines_apart_from_every_lease(store: Store) -> None:
    await started(store, "batch_o1", 6)
    now = time.time()
    dispatched = await store.claim_requests("batch_o1", "w1", 1, now, LEASE)
    assert [c.line for c in dispatched] == [1]
    candidates = await store.offload_candidates("batch_o1", now, 10_000, 10, last=True)
    assert [line for line, _ in candidates] == [6, 5, 4, 3, 2]  # from the end, pending only
    assert (await store.offload_candidates("batch_o1", now, 94, 10, last=False)) == [
        (2, 92),
        (3, 93),
        (4, 94),
    ]
    assert await store.offload_oversized("batch_o1", now, 94, 10) == [5, 6]
    chunk = new_chunk("chunk_a", "batch_o1")
    # Line 1 is the dispatcher's: only the pending lines are taken.
    taken = await store.take_lines("batch_o1", holder(chunk.id), HELD_UNTIL, [1, 3, 4, 5], chunk)
    assert [(t[0], t[2], t[3]) for t in taken] == [(3, "c3", 0), (4, "c4", 0), (5, "c5", 0)]
    assert chunk.lines == 3
    lines = await store.chunk_lines("chunk_a")
    assert [(c.line, c.custom_id, c.offset, c.length, c.epoch) for c in lines] == [
        (3, "c3", 200, 93, taken[0][1]),
        (4, "c4", 300, 94, taken[1][1]),
        (5, "c5", 400, 95, taken[2][1]),
    ]
    # No worker's release, reclaim, heartbeat or claim touches them.
    await store.release_leases(None)
    await store.reclaim_expired_leases(time.time() + 10 * LEASE)
    await store.heartbeat("w1", time.time() + LEASE)
    claims = await store.claim_requests("batch_o1", "w2", 10, time.time(), LEASE)
    assert sorted(c.line for c in claims) == [1, 2, 6]
    # Taking nothing makes no chunk.
    nothing = new_chunk("chunk_none", "batch_o1")
    assert await store.take_lines("batch_o1", holder("chunk_none"), HELD_UNTIL, [3], nothing) == []
    assert [c.id for c in await store.chunks_of("batch_o1")] == ["chunk_a"]


async def test_a_chunks_lease_is_fenced_and_taken_over(store: Store) -> None:
    await started(store, "batch_o2", 3)
    chunk = new_chunk("chunk_b", "batch_o2")
    await store.take_lines("batch_o2", holder(chunk.id), HELD_UNTIL, [1, 2], chunk)
    chunk.state, chunk.upstream_id = RUNNING, "batch_up"
    assert await store.save_chunk(chunk)
    now = time.time()
    assert await store.claim_chunks("w2", now, LEASE, 10) == []  # its lease still runs
    await store.renew_chunks("w1", now + LEASE)
    assert await store.claim_chunks("w2", now + 2 * LEASE, LEASE, 10) != []  # ran out
    stale = await store.save_chunk(chunk)
    assert not stale  # w1's epoch is no longer the chunk's
    (mine,) = await store.chunks_of("batch_o2")
    assert (mine.lease_owner, mine.lease_epoch, mine.state, mine.upstream_id) == (
        "w2",
        2,
        RUNNING,
        "batch_up",
    )
    # A worker that stops lets its chunks go at once.
    assert await store.release_chunks("w2") == 1
    (again,) = await store.claim_chunks("w3", time.time(), LEASE, 10)
    assert again.lease_epoch == 3
    assert await store.release_chunks(None) == 1


async def test_what_ran_where_is_read_back_from_the_requests(store: Store) -> None:
    await started(store, "batch_o3", 5)
    chunk = new_chunk("chunk_c", "batch_o3")
    taken = await store.take_lines("batch_o3", holder(chunk.id), HELD_UNTIL, [1, 2, 3, 4], chunk)
    epoch = {t[0]: t[1] for t in taken}
    outcomes = [
        final("batch_o3", 1, epoch[1], SUCCEEDED, tokens=10),
        final("batch_o3", 2, epoch[2], FAILED),
        final("batch_o3", 3, epoch[3], RETRY),  # given back
        final("batch_o3", 4, epoch[4] - 1, SUCCEEDED),  # a stale epoch: not applied
    ]
    await store.record_outcomes(outcomes, NOW)
    # The same outcomes again (a crash while collecting): nothing changes twice.
    await store.record_outcomes(outcomes, NOW)
    batch = await store.get_batch(None, "batch_o3")
    assert batch is not None and (batch.completed, batch.failed) == (1, 1)
    assert batch.usage.input_tokens == 10
    assert sorted(await store.chunk_results("chunk_c")) == [(1, True), (2, False)]
    shares = await store.offload_shares(["batch_o3", "batch_none"])
    offloaded, _ = shares["batch_o3"]
    assert (offloaded.lines, offloaded.running) == (0, 4)  # open: its counts are not in yet
    chunk.state, chunk.completed, chunk.failed = CLEANING, 1, 1
    chunk.recorded, chunk.tokens = 4, (10, 0, 0, 0)
    assert await store.finish_chunk(chunk)
    assert await store.chunk_lines("chunk_c") == []  # forgotten once it is cleaning
    offloaded, _ = (await store.offload_shares(["batch_o3"]))["batch_o3"]
    assert (offloaded.lines, offloaded.running, offloaded.by_backend()) == (2, 0, {"hosted": 2})
    assert offloaded.backends[0].tokens == (10, 0, 0, 0)


async def test_a_stopping_batch_waits_for_the_lines_a_chunk_holds(store: Store) -> None:
    await started(store, "batch_o4", 2)
    chunk = new_chunk("chunk_d", "batch_o4")
    taken = await store.take_lines("batch_o4", holder(chunk.id), HELD_UNTIL, [1, 2], chunk)
    cancelled = await store.request_cancel("alice", "batch_o4", NOW)
    assert cancelled is not None and cancelled.status == Status.CANCELLING
    assert "batch_o4" not in await store.batches_to_finalize(time.time())
    # The chunk gives its lines back (its upstream batch cancelled): now it may end.
    back = [final("batch_o4", line, epoch, RETRY) for line, epoch, _, _ in taken]
    await store.record_outcomes(back, NOW)
    assert "batch_o4" in await store.batches_to_finalize(time.time())
    # Finalisation fails them as never run: that is no result of the chunk's.
    claimed = await store.claim_finalization("batch_o4", "w1", time.time(), LEASE)
    assert claimed is not None
    assert await store.finish_finalization(
        "batch_o4", "w1", Status.CANCELLED, [], "batch_cancelled", "cancelled", NOW
    )
    assert await store.chunk_results("chunk_d") == []
