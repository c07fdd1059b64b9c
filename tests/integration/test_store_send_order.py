"""Claims follow the send order given at validation (``send_order``, then line), on SQLite and
PostgreSQL alike; each batch's claims follow its own order, whatever another batch's is; a
retried line comes back at its place; a claim carries the line's prefix group."""

from __future__ import annotations

import time

from lowtide.domain.records import BatchRecord, Pricing
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import RETRY, Claim, Outcome
from lowtide.store import Store

NOW = int(time.time())
LEASE = 60.0

# Lines 1..8 of a shuffled file: two prefix groups (A: 7, B: 9) and two lines in none, and
# the rank each got (groups together, the longest first within each).
GROUP = {1: 7, 2: 9, 3: 7, 4: 0, 5: 9, 6: 7, 7: 0, 8: 9}
RANK = {4: 0, 7: 1, 6: 2, 1: 3, 3: 4, 2: 5, 8: 6, 5: 7}


def ordered_lines(rank: dict[int, int] = RANK) -> list[RequestLine]:
    return [
        RequestLine(line, f"req-{line}", (line - 1) * 50, 49, rank[line], GROUP[line])
        for line in sorted(rank)
    ]


async def started(store: Store, batch_id: str, requests: list[RequestLine], **changes: int) -> None:
    record = BatchRecord(
        id=batch_id,
        account="alice",
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        completion_window="24h",
        created_at=NOW,
        expires_at=NOW + 86400,
    ).replace(**changes)
    await store.create_batch(record)
    claimed = await store.claim_validation("validator", time.time(), LEASE)
    assert claimed is not None and claimed.id == batch_id
    pricing = Pricing(0.0, 0.0, 0.5, "USD")
    assert await store.finish_validation(batch_id, "validator", requests, "m", pricing, NOW)


def in_send_order(rank: dict[int, int] = RANK) -> list[int]:
    return sorted(rank, key=rank.__getitem__)


async def test_claims_follow_the_send_order_and_carry_the_group(store: Store) -> None:
    await started(store, "batch_so", ordered_lines())
    now = time.time()
    first = await store.claim_requests("batch_so", "w", 3, now, LEASE)
    second = await store.claim_requests("batch_so", "w", 3, now, LEASE)
    third = await store.claim_requests("batch_so", "w", 3, now, LEASE)
    claimed = [c.line for c in first + second + third]
    assert claimed == in_send_order()  # not line order: [4, 7, 6, 1, 3, 2, 8, 5]
    assert [c.prefix_group for c in first + second + third] == [GROUP[n] for n in claimed]
    assert first[2] == Claim("batch_so", 6, "req-6", 250, 49, 0, 1, 7)


async def test_equal_send_orders_fall_back_to_line_order(store: Store) -> None:
    # What prefix_order = false writes (0 for every line), and what rows from before the
    # send order existed hold: file order, as lowtide always sent.
    await started(store, "batch_fo", ordered_lines(dict.fromkeys(RANK, 0)))
    claims = await store.claim_requests("batch_fo", "w", 8, time.time(), LEASE)
    assert [c.line for c in claims] == list(range(1, 9))


async def test_a_retried_line_is_claimed_again_at_its_place(store: Store) -> None:
    await started(store, "batch_rt", ordered_lines())
    now = time.time()
    first = await store.claim_requests("batch_rt", "w", 4, now, LEASE)
    back = first[1]  # line 7, rank 1: back to pending, claimable at once
    retry = Outcome(back.batch_id, back.line, back.epoch, RETRY, custom_id=back.custom_id)
    await store.record_outcomes([retry], NOW)
    again = await store.claim_requests("batch_rt", "w", 3, now, LEASE)
    assert [c.line for c in again] == [back.line, *in_send_order()[4:6]]
    assert again[0].epoch == back.epoch + 1


async def test_each_batch_is_claimed_in_its_own_order(store: Store) -> None:
    # Two batches whose orders cross: claiming from one never takes or skips the other's rows,
    # and a claim of the second batch follows its own order whatever the first one's groups.
    reverse = {line: 7 - rank for line, rank in RANK.items()}
    await started(store, "batch_one", ordered_lines(), expires_at=NOW + 100)
    await started(store, "batch_two", ordered_lines(reverse), expires_at=NOW + 9000)
    now = time.time()
    one = await store.claim_requests("batch_one", "w", 2, now, LEASE)
    two = await store.claim_requests("batch_two", "w", 8, now, LEASE)
    rest = await store.claim_requests("batch_one", "w", 8, now, LEASE)
    assert [c.line for c in one + rest] == in_send_order()
    assert [c.line for c in two] == in_send_order(reverse)
    assert {c.batch_id for c in two} == {"batch_two"}
    assert [b.id for b in await store.active_batches()] == ["batch_one", "batch_two"]
