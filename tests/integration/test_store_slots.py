"""Fleet-wide concurrency slots are shared fairly between the workers that want them, on
SQLite and PostgreSQL alike (``lowtide.store.slots``). Each ``acquire_slots`` call is one
renewal of one worker (what ``CapacityKeeper.tick`` does every half second); times are passed
explicitly, so nothing sleeps."""

from __future__ import annotations

import time

from lowtide.store import Store
from lowtide.store.slots import Demand, Plan, fair_shares, plan

LEASE = 60.0
CEILING = 6


async def rounds(
    store: Store, wants: dict[str, int], n: int, now: float, in_use: dict[str, int] | None = None
) -> dict[str, int]:
    """``n`` rounds in which every worker renews once; the ceiling holds after every call."""
    got = dict.fromkeys(wants, 0)
    for _ in range(n):
        for owner, want in wants.items():
            busy = (in_use or {}).get(owner, 0)
            got[owner] = await store.acquire_slots("gpu", owner, want, CEILING, now, LEASE, busy)
            assert sum(got.values()) <= CEILING
    return got


async def test_two_workers_that_want_slots_end_up_with_half_each(store: Store) -> None:
    now = time.time()
    # A asks first and nobody else wants any: it may take the whole ceiling...
    assert await store.acquire_slots("gpu", "A", CEILING, CEILING, now, LEASE) == CEILING
    # ...B asks too and finds none free; from A's next renewal on they share.
    assert await store.acquire_slots("gpu", "B", CEILING, CEILING, now, LEASE) == 0
    assert await rounds(store, {"A": CEILING, "B": CEILING}, 3, now) == {"A": 3, "B": 3}


async def test_slots_in_use_go_back_only_as_their_requests_end(store: Store) -> None:
    now = time.time()
    assert await store.acquire_slots("gpu", "A", CEILING, CEILING, now, LEASE, 0) == CEILING
    assert await store.acquire_slots("gpu", "B", CEILING, CEILING, now, LEASE) == 0
    # A runs six requests: it may start nothing new past its share, but keeps their slots.
    busy = {"A": 6}
    assert await rounds(store, {"A": CEILING, "B": CEILING}, 2, now, busy) == {"A": 3, "B": 0}
    busy["A"] = 4  # two ended: their slots go to B
    assert await rounds(store, {"A": CEILING, "B": CEILING}, 1, now, busy) == {"A": 3, "B": 2}
    busy["A"] = 3
    assert await rounds(store, {"A": CEILING, "B": CEILING}, 1, now, busy) == {"A": 3, "B": 3}


async def test_a_worker_takes_more_only_when_nobody_else_wants_them(store: Store) -> None:
    now = time.time()
    wants = {"A": CEILING, "B": CEILING}
    assert await rounds(store, wants, 3, now) == {"A": 3, "B": 3}
    wants["B"] = 0  # B's batches are done
    assert await rounds(store, wants, 2, now) == {"A": CEILING, "B": 0}
    wants["B"] = 2  # B wants a little: it gets that, A the rest
    assert await rounds(store, wants, 3, now) == {"A": 4, "B": 2}


async def test_a_share_not_wanted_goes_to_the_others(store: Store) -> None:
    got = await rounds(store, {"A": 1, "B": CEILING, "C": CEILING}, 3, time.time())
    assert got == {"A": 1, "B": 3, "C": 2} or got == {"A": 1, "B": 2, "C": 3}
    assert sum(got.values()) == CEILING


async def test_a_dead_worker_stops_counting_when_its_lease_runs_out(store: Store) -> None:
    now = time.time()
    assert await rounds(store, {"A": CEILING, "B": CEILING}, 3, now) == {"A": 3, "B": 3}
    # B stops renewing (it died); once its lease has run out, A may take every slot.
    later = now + LEASE + 1
    assert await store.acquire_slots("gpu", "A", CEILING, CEILING, later, LEASE) == CEILING


def test_fair_shares_are_max_min_fair_and_add_up() -> None:
    assert fair_shares(6, {"A": 6, "B": 6}) == {"A": 3, "B": 3}
    assert fair_shares(7, {"A": 7, "B": 7, "C": 7}) == {"A": 3, "B": 2, "C": 2}
    assert fair_shares(7, {"A": 1, "B": 7, "C": 7}) == {"A": 1, "B": 3, "C": 3}
    assert fair_shares(2, {"A": 5, "B": 5, "C": 5}) == {"A": 1, "B": 1, "C": 0}
    assert fair_shares(5, {"A": 0, "B": 2}) == {"A": 0, "B": 2}
    assert fair_shares(0, {"A": 3}) == {"A": 0}


def test_plan_caps_a_worker_at_its_share_only_while_others_wait() -> None:
    alone = plan("A", 6, 0, 6, 0, [])
    assert alone == Plan(allowed=6, take=6)
    waiting = [Demand("B", 6, 0)]
    assert plan("A", 6, 0, 6, 6, waiting) == Plan(allowed=3, give_back=3)
    assert plan("A", 6, 5, 6, 6, waiting) == Plan(allowed=3, give_back=1)  # 5 busy
    satisfied = [Demand("B", 6, 3)]
    assert plan("A", 6, 0, 6, 3, satisfied) == Plan(allowed=6, take=3)
    assert Plan(allowed=3, give_back=1).granted(5) == 3
