"""rpm/tpm budgets (``lowtide.engine.budgets``) and token estimates (``lowtide.engine.tokens``),
in-process with a fake clock: the budget's sleeps move that clock instead of waiting.

The upstream is the simulated engine's own budget (``RollingBudget``, as OpenAI and DashScope
count: one request, and prompt tokens + max_tokens at arrival, per rolling minute) and its
tokenizer stands in for the backend's ``/tokenize``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from lowtide.engine import budgets
from lowtide.engine.budgets import Budget, RollingWindow
from lowtide.engine.tokens import DEFAULT_RATIO, TokenEstimator, read_prompt
from lowtide.testing.engine_sim.limits import RollingBudget
from lowtide.testing.engine_sim.tokens import chat_tokens

WINDOW = 60.0
SPAN = WINDOW * (1 + budgets.WINDOW_MARGIN)


@dataclass
class FakeClock:
    now: float = 5000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


def chat(words: int, max_tokens: int | None = 100, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    text = " ".join(rng.choice(["report", "the", "quarter", "revenue", "of"]) for _ in range(words))
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return orjson.dumps(body)


# --- the rolling window ------------------------------------------------------------------------


def test_requests_per_minute_wait_for_the_oldest_to_leave() -> None:
    clock = FakeClock()
    window = RollingWindow(rpm=3, tpm=0, window=WINDOW, clock=clock)
    first = clock.now
    for _ in range(3):
        assert window.wait(10) == 0
        window.take(10)
        clock.now += 1.0
    # The fourth fits once the first has left the (slightly longer) window.
    assert window.wait(10) == pytest.approx(first + SPAN - clock.now)
    clock.now = first + SPAN
    assert window.wait(10) == 0


def test_tokens_per_minute_count_the_estimate_until_the_answer_corrects_it() -> None:
    clock = FakeClock()
    window = RollingWindow(rpm=0, tpm=1000, window=WINDOW, clock=clock)
    assert window.tpm == 990  # 1% headroom
    big = window.take(900)
    assert window.wait(100) > 0
    window.adjust(big, 500)  # the answer: it counted 500
    assert window.wait(100) == 0 and window.tokens == 500
    # A refused send counts nothing.
    window.adjust(big, 0, requests=0)
    assert window.tokens == 0 and window.requests == 0


def test_a_request_larger_than_the_budget_goes_alone_into_an_empty_window() -> None:
    clock = FakeClock()
    window = RollingWindow(rpm=0, tpm=1000, window=WINDOW, clock=clock)
    assert window.wait(5000) == 0
    window.take(5000)
    assert window.wait(5000) == pytest.approx(SPAN)


def test_a_429_holds_every_send_until_its_retry_after() -> None:
    clock = FakeClock()
    window = RollingWindow(rpm=100, tpm=0, window=WINDOW, clock=clock)
    window.block(7.5)
    assert window.wait(1) == pytest.approx(7.5)
    clock.now += 7.5
    assert window.wait(1) == 0


# --- token estimates -----------------------------------------------------------------------


def test_estimates_read_the_prompt_and_max_tokens() -> None:
    prompt = read_prompt(chat(30, max_tokens=77))
    assert prompt.max_output == 77 and prompt.tokenizable is not None and prompt.size > 30
    ids = read_prompt(orjson.dumps({"model": "m", "prompt": [1, 2, 3], "max_completion_tokens": 5}))
    assert (ids.token_ids, ids.size, ids.max_output) == (3, 0, 5)
    est = TokenEstimator()
    guess = est.estimate("b1", prompt)
    assert guess.output_tokens == 77
    assert guess.prompt_tokens >= prompt.size * DEFAULT_RATIO


def test_estimates_are_calibrated_then_corrected_by_usage() -> None:
    est = TokenEstimator()
    body = chat(200, max_tokens=50)
    prompt = read_prompt(body)
    true_tokens = len(chat_tokens(orjson.loads(body)["messages"]))
    assert est.wants_tokenize("b1", prompt)
    est.calibrate("b1", prompt, true_tokens)
    guess = est.estimate("b1", prompt)
    assert true_tokens <= guess.prompt_tokens <= true_tokens * 1.06  # the margin only
    # Without max_tokens, the output is what the batch's answers used so far.
    bare = read_prompt(chat(200, max_tokens=None))
    first = est.estimate("b1", bare)
    assert est.answered(first, true_tokens, 40) == true_tokens + 40
    assert est.estimate("b1", bare).output_tokens == 40
    # Only a batch's first lines are tokenized.
    asks = [est.wants_tokenize("b2", prompt) for _ in range(5)]
    assert asks == [True, True, True, False, False]
    est.tokenize_works = False
    assert not est.wants_tokenize("b3", prompt)


# --- pacing against the upstream's own budget ----------------------------------------------


async def pace(
    budget: Budget, clock: FakeClock, bodies: list[bytes], latency: float
) -> dict[str, Any]:
    """Send ``bodies`` through ``budget`` to an upstream that enforces the same rpm and tpm
    (in the fake clock's time); each answer comes back ``latency`` seconds after its send with
    the upstream's usage. Returns counts and the upstream's admissions."""
    upstream = RollingBudget(budget.rpm, budget.tpm, WINDOW)
    answers: list[tuple[float, int, Any, int, int]] = []
    order = itertools.count()
    admitted: list[tuple[float, int]] = []
    refused = 0

    def deliver(until: float) -> None:
        while answers and answers[0][0] <= until:
            _, _, charge, prompt, output = heapq.heappop(answers)
            budget.answered(charge, 200, prompt, output)

    for body in bodies:
        deliver(clock.now)
        charge = await budget.acquire(body, "batch-1")
        deliver(clock.now)
        parsed = orjson.loads(body)
        prompt_tokens = len(chat_tokens(parsed["messages"]))
        cost = prompt_tokens + parsed["max_tokens"]
        verdict = upstream.try_admit(clock.now, cost)
        if not verdict.ok:
            refused += 1
            budget.refused(charge, verdict.retry_after)
            continue
        admitted.append((clock.now, cost))
        heapq.heappush(answers, (clock.now + latency, next(order), charge, prompt_tokens, 50))
    return {"refused": refused, "admitted": admitted}


def per_minute_use(admitted: list[tuple[float, int]], rpm: int, tpm: int) -> float:
    """The binding limit's mean use over the whole minutes from the first admission."""
    t0 = admitted[0][0]
    minutes = int((admitted[-1][0] - t0) // WINDOW)
    use = []
    for k in range(minutes):
        inside = [c for at, c in admitted if t0 + k * WINDOW <= at < t0 + (k + 1) * WINDOW]
        use.append(max(len(inside) / rpm if rpm else 0, sum(inside) / tpm if tpm else 0))
    return sum(use) / len(use)


# A long simulated run: unmeasured (the `untraced` mark), its code is covered by the shorter
# tests, and coverage's tracer would double its CPU.
@pytest.mark.untraced
@pytest.mark.parametrize(("rpm", "tpm"), [(300, 0), (0, 60_000), (400, 100_000)])
async def test_paced_sends_are_never_refused_and_fill_the_budget(rpm: int, tpm: int) -> None:
    clock = FakeClock()

    async def tokenize(payload: dict[str, Any]) -> int | None:
        return len(chat_tokens(payload["messages"]))

    budget = Budget("up", rpm, tpm, window=WINDOW, clock=clock, sleep=clock.sleep,
                    tokenize=tokenize)  # fmt: skip
    rng = random.Random(3)
    bodies = [
        chat(rng.randint(50, 300), max_tokens=rng.randint(20, 200), seed=i) for i in range(2500)
    ]
    result = await pace(budget, clock, bodies, latency=4.0)
    assert result["refused"] == 0
    assert per_minute_use(result["admitted"], rpm, tpm) >= 0.95


async def test_without_tokenize_the_first_estimates_are_high_then_corrected() -> None:
    clock = FakeClock()
    budget = Budget("up", 0, 40_000, window=WINDOW, clock=clock, sleep=clock.sleep)
    bodies = [chat(150, max_tokens=50, seed=i) for i in range(1500)]
    result = await pace(budget, clock, bodies, latency=2.0)
    assert result["refused"] == 0
    assert per_minute_use(result["admitted"], 0, 40_000) >= 0.9
    assert budget.estimator.backend.ratio() is not None  # learned from the answers' usage


async def test_a_refusal_holds_the_budget_and_costs_nothing() -> None:
    clock = FakeClock()
    budget = Budget("up", 10, 0, window=WINDOW, clock=clock, sleep=clock.sleep)
    charge = await budget.acquire(chat(10), "b")
    assert budget.window.requests == 1
    budget.refused(charge, 3.0)
    assert budget.window.requests == 0
    start = clock.now
    await budget.acquire(chat(10), "b")
    assert clock.now == pytest.approx(start + 3.0)
    unsent = await budget.acquire(chat(10), "b")
    budget.unsent(unsent)
    assert budget.window.requests == 1
