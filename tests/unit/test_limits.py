"""The concurrency limiters (``lowtide.engine.limits``), driven in-process with a fake clock.

The latency limiter is run against the simulated engine's pure core (``EngineCore``, stepped in
model time by a small event loop here): a client that keeps ``limit()`` requests in flight,
as the dispatcher does, and reports each answer's latency and output tokens. What is checked
is what the limiter is for: it climbs to the engine's knee and stays near it (the engine's
queue stays short, its batch stays full), whatever the knee is.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest

from lowtide.engine.limits import (
    AdaptiveLimit,
    EngineLoad,
    EngineLoadLimit,
    FixedLimit,
    LatencyLimit,
)
from lowtide.testing.engine_sim import EngineConfig, EngineCore, Seq


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fixed_is_the_ceiling_whatever_happens() -> None:
    clock = FakeClock()
    limit = FixedLimit(64, clock)
    ticket = limit.sent()
    limit.answered(ticket, 5.0, 100)
    assert not limit.overloaded(limit.sent())
    limit.observe(EngineLoad(running=1, waiting=100), own=1)
    assert limit.limit() == 64 and limit.source() == "fixed"


# --- from the engine's metrics ---------------------------------------------------------------


def scrape(
    limit: EngineLoadLimit,
    clock: FakeClock,
    running: int,
    waiting: int,
    own: int,
    *,
    ended: int = 1,
) -> int:
    """One scrape interval: ``ended`` of lowtide's requests end, then the engine is read."""
    clock.now += 0.1
    for _ in range(ended):
        limit.ended()
    limit.observe(EngineLoad(running, waiting), own)
    return limit.limit()


def test_metrics_climb_until_the_engine_queues_then_keep_the_reserve_free() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=3, clock=clock, initial=8)
    capacity = 40  # the engine's: what it runs at once
    seen = []
    for _ in range(60):
        own = limit.limit()  # lowtide fills what it may
        running, waiting = min(own, capacity), max(0, own - capacity)
        seen.append(scrape(limit, clock, running, waiting, own))
    assert limit.capacity == capacity
    assert seen[-1] == capacity - 3  # the reserve stays free
    assert max(seen) <= 256
    assert seen[:5] == sorted(seen[:5]) and seen[4] > 8  # it climbed before it knew


def test_metrics_fall_back_at_the_first_sign_of_a_full_engine() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=3, clock=clock, initial=8)
    assert scrape(limit, clock, running=8, waiting=0, own=8) == 9  # an eighth more, at least 1
    queued = 0  # scrapes that saw requests waiting
    for _ in range(30):
        own = limit.limit()
        queued += own > 20
        if scrape(limit, clock, running=min(own, 20), waiting=max(0, own - 20), own=own) < own:
            break
    # Requests waited at two scrapes in a row while the engine ran its most (20), and two of
    # lowtide's requests ended meanwhile (one per scrape here: so at the third): the limit
    # went back to 20 less the reserve at once, before the capacity is even known...
    assert queued == 3
    assert limit.capacity is None and limit.limit() == 20 - 3
    # ...and climbs one at a time from there.
    assert scrape(limit, clock, running=17, waiting=0, own=17) == 18
    assert scrape(limit, clock, running=18, waiting=0, own=18) == 19


def test_metrics_subtract_what_others_run_and_queue() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=2, clock=clock)
    # The engine is full (something waits at scrape after scrape) with 30 running.
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=30, waiting=4, own=30)
    assert limit.capacity == 30
    # 6 running and 1 waiting are someone else's (lowtide has 20 in flight).
    assert scrape(limit, clock, running=26, waiting=1, own=20) == 30 - 2 - 7
    # Someone else takes everything: lowtide still sends one at a time, never none.
    assert scrape(limit, clock, running=30, waiting=50, own=3) == 1


def test_a_passing_queue_leaves_the_capacity_and_a_lasting_one_lowers_it() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=2, clock=clock)
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=32, waiting=3, own=32)
    assert limit.capacity == 32
    # Requests that arrived between two steps wait at two scrapes while only 20 ran: passing.
    for _ in range(2):
        scrape(limit, clock, running=20, waiting=1, own=20)
    assert limit.capacity == 32
    # A queue that stays while 20 run: the engine holds fewer now (a full KV cache), and the
    # capacity comes down, one at a time, as long as that lasts.
    for _ in range(EngineLoadLimit.LOWER_SCRAPES):
        scrape(limit, clock, running=20, waiting=4, own=24)
    assert 20 < limit.capacity < 32
    for _ in range(20):
        scrape(limit, clock, running=20, waiting=4, own=24)
    assert limit.capacity == 20
    assert scrape(limit, clock, running=20, waiting=4, own=24) == 20 - 2 - 0
    # More running than known: the capacity is at least that.
    scrape(limit, clock, running=36, waiting=0, own=33)
    assert limit.capacity == 36


def test_metrics_probe_for_more_capacity_now_and_then() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=2, clock=clock)
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=16, waiting=2, own=16)
    assert limit.capacity == 16
    assert scrape(limit, clock, running=14, waiting=0, own=14) == 14
    clock.now += EngineLoadLimit.PROBE_MIN
    # lowtide uses its whole limit and nothing queued for a while: one scrape interval may
    # run an eighth more than the known capacity, the reserve included.
    assert scrape(limit, clock, running=14, waiting=0, own=14) == 16 + 2
    # The engine ran 18: its capacity grew, and the next probe comes as soon.
    assert scrape(limit, clock, running=18, waiting=0, own=18) == 18 - 2
    assert limit.capacity == 18
    clock.now += EngineLoadLimit.PROBE_MIN
    assert scrape(limit, clock, running=16, waiting=0, own=16) == 18 + 2
    # This time it queued instead: capacity unchanged, and the next probe waits twice as long.
    assert scrape(limit, clock, running=18, waiting=2, own=20) == 18 - 2 - 0
    assert limit.capacity == 18
    clock.now += EngineLoadLimit.PROBE_MIN
    assert scrape(limit, clock, running=16, waiting=0, own=16) == 16
    clock.now += EngineLoadLimit.PROBE_MIN
    assert scrape(limit, clock, running=16, waiting=0, own=16) == 18 + 2


def test_metrics_probe_by_one_while_others_use_the_engine() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=2, clock=clock)
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=16, waiting=2, own=18)
    assert scrape(limit, clock, running=14, waiting=0, own=13) == 16 - 2 - 1
    clock.now += EngineLoadLimit.PROBE_MIN
    # Someone else runs one request: the probe asks for one more than the capacity only.
    assert scrape(limit, clock, running=14, waiting=0, own=13) == 16 + 1 - 1


def test_a_stalled_engine_teaches_nothing() -> None:
    clock = FakeClock()
    limit = EngineLoadLimit(ceiling=256, reserve=2, clock=clock, initial=8)
    # Requests wait scrape after scrape, but nothing ends: the engine (or this machine)
    # stalls; that says nothing of how many it can run.
    for _ in range(3 * EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=8, waiting=5, own=13, ended=0)
    assert limit.capacity is None
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        scrape(limit, clock, running=8, waiting=5, own=13)
    assert limit.capacity == 8


# --- from latency, against the simulated engine ------------------------------------------------


@dataclass(order=True)
class _Event:
    at: float
    order: int
    kind: str = field(compare=False)
    seq: Seq | None = field(compare=False, default=None)


@dataclass
class Run:
    limits: list[int]
    peak_waiting: int
    mean_running: float


def run_latency_limit(
    config: EngineConfig, lines: int, *, seed: int = 1, initial: int = 8
) -> tuple[LatencyLimit, Run]:
    """Keep ``limit()`` requests of ``lines`` in flight to the engine, in model time; each
    answer reports its latency and output tokens. The client's own delays: 10 ms each way."""
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    limiter = LatencyLimit(ceiling=256, clock=clock, initial=initial)
    core = EngineCore(config)
    order = itertools.count()
    events: list[_Event] = []
    sent_at: dict[int, tuple[float, int | None]] = {}
    todo = [(rng.randint(190, 210), rng.randint(64, 192)) for _ in range(lines)]
    tokens = itertools.count(1)
    in_flight, step_planned, limits = 0, False, []
    busy = running_time = 0.0

    def push(at: float, kind: str, seq: Seq | None = None) -> None:
        heapq.heappush(events, _Event(at, next(order), kind, seq))

    def plan_step(now: float) -> None:
        nonlocal step_planned
        at = core.next_step_at()
        if at is not None and not step_planned:
            step_planned = True
            push(max(at, now), "step")

    push(0.0, "fill")
    while events:
        event = heapq.heappop(events)
        clock.now = event.at
        if event.kind == "step":
            step_planned = False
            result = core.step()
            busy += result.duration
            running_time += result.duration * result.running
            for seq in result.finished:
                push(seq.finished_at + 0.01, "answer", seq)  # type: ignore[operator]
            plan_step(event.at)
        elif event.kind == "arrive":
            assert event.seq is not None
            core.add(event.seq)
            plan_step(event.at)
        elif event.kind == "answer":
            assert event.seq is not None
            started, sample = sent_at.pop(event.seq.rid)
            in_flight -= 1
            limiter.ended(sample, (event.at - started) / event.seq.output)
            push(event.at + 0.01, "fill")
        elif event.kind == "fill":
            while todo and in_flight < limiter.limit():
                prompt, output = todo.pop()
                seq = Seq.of(tuple(next(tokens) for _ in range(prompt)), output, event.at + 0.01,
                             config.block_size)  # fmt: skip
                in_flight += 1
                sample = limiter.sent(event.at)
                core.add(seq)  # arrives 10 ms later: stamped so, queued at once
                sent_at[seq.rid] = (event.at, sample)
                plan_step(event.at)
            limits.append(limiter.limit())
    return limiter, Run(limits, core.counters.peak_waiting, running_time / busy)


# A long simulated run: unmeasured (the `untraced` mark), its code is covered by the shorter
# tests, and coverage's tracer would double its CPU.
@pytest.mark.untraced
@pytest.mark.parametrize("max_seqs", [16, 32, 64])
def test_latency_finds_the_knee_without_a_long_queue(max_seqs: int) -> None:
    config = EngineConfig(max_seqs=max_seqs, speed=10)
    limiter, run = run_latency_limit(config, lines=60 * max_seqs)
    # The engine's batch was mostly full (the first climb from 8 included)...
    assert run.mean_running >= 0.8 * max_seqs
    # ...and its queue stayed short: never half of what it runs.
    assert run.peak_waiting <= max_seqs / 2
    # It settled within a step or two of the knee, far under the ceiling of 256.
    assert 0.8 * max_seqs <= limiter.base <= 1.45 * max_seqs


def test_latency_climbs_to_the_ceiling_when_latency_does_not_grow() -> None:
    clock = FakeClock()
    limiter = LatencyLimit(ceiling=100, clock=clock, initial=8)
    for _ in range(400):
        n = limiter.limit()
        samples = [limiter.sent(clock.now) for _ in range(n)]
        clock.now += 1.0
        for sample in samples:
            limiter.ended(sample, 0.01)  # a hosted API: our load does not slow it
    assert limiter.limit() == 100


def test_latency_comes_down_when_the_backend_gets_busier() -> None:
    clock = FakeClock()
    limiter = LatencyLimit(ceiling=100, clock=clock, initial=40)
    limiter.reset(40)

    def round_trip(per_token: float) -> None:
        n = limiter.limit()
        samples = [limiter.sent(clock.now) for _ in range(n)]
        clock.now += 1.0
        for sample in samples:
            limiter.ended(sample, per_token * max(1.0, n / 20))  # the knee is now at 20

    for _ in range(60):
        round_trip(0.01)
    assert limiter.limit() <= 26


# --- both, and the cut ----------------------------------------------------------------------


def test_adaptive_uses_fresh_metrics_else_latency() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(256, 2, clock, scrape_interval=0.1, initial=8)
    assert limit.source() == "latency" and limit.limit() == 8
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        clock.now += 0.1
        limit.done(limit.sent())  # lowtide's requests keep ending: the engine works
        limit.observe(EngineLoad(running=24, waiting=3), own=8)
    assert limit.source() == "metrics" and limit.capacity == 24
    assert limit.limit() == 24 - 2 - (24 + 3 - 8)
    clock.now += 10.0  # idle: nothing is scraped, nothing is sent, the metrics still stand
    assert limit.source() == "metrics"
    ticket = limit.sent()
    clock.now += 0.1 * AdaptiveLimit.STALE_SCRAPES + 0.01  # busy, and the scrapes stopped
    assert limit.source() == "latency"
    assert limit.limit() == 3  # latency takes over from where the metrics left it
    limit.done(ticket)
    clock.now += 0.1
    limit.observe(EngineLoad(running=20, waiting=0), own=0)
    assert limit.source() == "metrics"
    limit.unobserved()  # a scrape failed: latency at once
    assert limit.source() == "latency"


def test_a_429_halves_the_limit_once_per_round_trip() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(256, 2, clock, scrape_interval=0.1, initial=40)
    before = [limit.sent() for _ in range(10)]
    clock.now += 1.0
    assert limit.overloaded(before[0])
    assert limit.limit() == 20
    # The others were sent before the cut: the same overload, no second cut.
    assert not any(limit.overloaded(t) for t in before[1:])
    assert limit.limit() == 20
    after = limit.sent()
    clock.now += 1.0
    assert limit.overloaded(after) and limit.limit() == 10


def test_a_cut_caps_the_metrics_limit_until_answers_let_it_grow() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(256, 0, clock, scrape_interval=0.1, initial=8)
    for _ in range(EngineLoadLimit.LEARN_SCRAPES):
        clock.now += 0.01
        limit.done(limit.sent())
        limit.observe(EngineLoad(running=32, waiting=2), own=34)  # all of them lowtide's
    assert limit.limit() == 32
    ticket = limit.sent()
    clock.now += 0.01
    assert limit.overloaded(ticket)
    limit.observe(EngineLoad(running=32, waiting=0), own=31)
    assert limit.limit() == 16
    for _ in range(16 * 4):  # about four round trips of answers
        limit.answered(limit.sent(), 0.5, 10)
    assert 18 <= limit.limit() <= 22
