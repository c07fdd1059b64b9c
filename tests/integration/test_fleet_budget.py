"""A backend's rpm/tpm budget shared by a fleet (``lowtide.engine.budgets`` in slices through
PostgreSQL, ``lowtide.store.budgets``): three workers, each with its own connection pool, send
to one upstream that enforces the budget, and it never refuses them.

Time is a fake clock, the same for the workers, the database rows and the upstream: a worker
that waits for the budget moves it instead of sleeping. The workers take turns sending (the
one whose turn it is may wait, which moves everyone's time), so that every wait is a real
wait of the fleet, not one overlapping another's.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from lowtide.engine.budgets import Budget, Charge
from lowtide.store import Store, open_store
from lowtide.store.budgets import Grant
from lowtide.testing.engine_sim.limits import RollingBudget
from lowtide.testing.engine_sim.tokens import chat_tokens

pytestmark = pytest.mark.postgres

WINDOW = 60.0
RPM = 90
TPM = 30_000


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0  # a wall-clock time: the slices are dated by it

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Counted:
    """The real store; counts the budget's round trips to the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.claims = 0

    async def claim_budget(self, *args: Any) -> Grant:
        self.claims += 1
        return await self.store.claim_budget(*args)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[list[Store]]:
    opened = [open_store(pg_url) for _ in range(3)]
    for store in opened:
        await store.open()
    yield opened
    for store in opened:
        await store.close()


def body(i: int, rng: random.Random) -> bytes:
    words = " ".join(rng.choice(["quarter", "revenue", "the", "report"]) for _ in range(80))
    messages = [{"role": "user", "content": f"line {i}: {words}"}]
    return orjson.dumps({"model": "m", "messages": messages, "max_tokens": rng.randint(50, 250)})


def worker(
    store: Store, owner: str, clock: FakeClock, rpm: int = RPM, tpm: int = TPM
) -> tuple[Budget, Counted]:
    counted = Counted(store)

    async def tokenize(payload: dict[str, Any]) -> int | None:
        return len(chat_tokens(payload["messages"]))

    budget = Budget(
        "hosted",
        rpm,
        tpm,
        window=WINDOW,
        clock=clock,
        wall=clock,
        sleep=clock.sleep,
        store=counted,  # type: ignore[arg-type]
        owner=owner,
        tokenize=tokenize,
    )
    return budget, counted


async def test_three_workers_share_the_budget_without_a_refusal(stores: list[Store]) -> None:
    clock = FakeClock()
    upstream = RollingBudget(RPM, TPM, WINDOW)
    fleet = [worker(store, owner, clock) for store, owner in zip(stores, "ABC", strict=True)]
    rng = random.Random(5)
    answers: list[tuple[float, int, Budget, Charge, int]] = []
    order = itertools.count()
    sent = {owner: 0 for owner in "ABC"}
    admitted: list[tuple[float, int]] = []
    refused = 0

    def deliver() -> None:
        while answers and answers[0][0] <= clock.now:
            _, _, budget, charge, prompt = heapq.heappop(answers)
            budget.answered(charge, 200, prompt, 0)

    for i in range(900):
        owner = "ABC"[i % 3]
        budget, _ = fleet[i % 3]
        line = body(i, rng)
        deliver()
        charge = await budget.acquire(line, "batch-1")
        deliver()
        parsed = orjson.loads(line)
        prompt = len(chat_tokens(parsed["messages"]))
        verdict = upstream.try_admit(clock.now, prompt + parsed["max_tokens"])
        if not verdict.ok:
            refused += 1
            budget.refused(charge, verdict.retry_after)
            continue
        sent[owner] += 1
        admitted.append((clock.now, prompt + parsed["max_tokens"]))
        heapq.heappush(answers, (clock.now + 3.0, next(order), budget, charge, prompt))
    for budget, _ in fleet:
        await budget.close()

    assert refused == 0  # never more than the budget in any minute, fleet-wide
    assert min(sent.values()) >= 0.2 * sum(sent.values())  # every worker had its share
    # The fleet used most of the binding limit in every whole minute it had work...
    t0 = admitted[0][0]
    minutes = int((admitted[-1][0] - t0) // WINDOW)
    assert minutes >= 5
    for k in range(minutes):
        inside = [c for at, c in admitted if t0 + k * WINDOW <= at < t0 + (k + 1) * WINDOW]
        assert max(len(inside) / RPM, sum(inside) / TPM) >= 0.8, f"minute {k}"
    # ...and asked the database only once per slice, not per request.
    assert sum(counted.claims for _, counted in fleet) <= sum(sent.values()) / 2


async def test_a_slice_given_back_is_the_fleets_again_and_a_dead_workers_runs_out(
    stores: list[Store],
) -> None:
    clock = FakeClock()
    a, _ = worker(stores[0], "A", clock)
    b, _ = worker(stores[1], "B", clock)
    now, span = clock.now, WINDOW * 1.02
    # A takes a slice of the whole budget (as a worker that sends in bursts may) and dies
    # without giving it back; B finds no room until that slice has left the window.
    grant = await stores[0].claim_budget("hosted", "A", None, RPM, 0, 0, RPM, 0, now, span, now + 2)
    assert grant.slice_id is not None and grant.requests == RPM
    late = await stores[1].claim_budget("hosted", "B", None, 3, 0, 0, RPM, 0, now, span, now + 2)
    assert late.slice_id is None and late.retry_after == pytest.approx(2 + span)
    # A worker that gives back what it did not use: the rest is the fleet's at once.
    clock.now += 2 + span
    await a.acquire(body(0, random.Random(1)), "b")
    assert a.slice.requests == RPM // 30 and a.slice.used_requests == 1
    await a.close()
    grant = await stores[1].claim_budget(
        "hosted", "B", None, RPM, 0, 0, RPM, 0, clock.now, span, clock.now + 2
    )
    assert grant.requests == RPM - 1
    await b.close()


async def test_a_tokens_only_budget_asks_the_database_once_per_slice(
    stores: list[Store],
) -> None:
    clock = FakeClock()
    start = clock.now
    budget, counted = worker(stores[0], "A", clock, rpm=0, tpm=TPM)
    rng = random.Random(2)
    for i in range(300):
        charge = await budget.acquire(body(i, rng), "batch-1")
        budget.answered(charge, 200, 100, 0)
    await budget.close()
    # A slice is a thirtieth of the minute's tokens, whatever the number of requests: about
    # 30 database calls a minute (and one more per wait for room).
    minutes = (clock.now - start) / WINDOW
    assert minutes >= 2
    assert counted.claims <= 40 * (minutes + 1)
