"""How many requests a backend gets at once: a fixed ceiling, or a limit that follows the
backend's knee (``concurrency = "adaptive"``). Pure classes: they read no clock of their own
(``clock`` is injected) and do no I/O, so the tests drive them with a fake clock.

An inference engine runs at most so many sequences at once (vLLM's ``--max-num-seqs``, or fewer
when the KV cache is full). Past that, more requests in flight only wait in its queue: the
engine's throughput does not grow, and every other user of the engine waits behind them. The
adaptive limit finds that point and stays there, two ways:

- ``EngineLoadLimit``, from the engine's own metrics (vLLM's or SGLang's ``/metrics``): the
  engine's capacity is the most sequences seen running while requests were waiting; lowtide's
  share is that capacity, less ``reserve`` slots kept free for traffic that is not lowtide's, less
  what that other traffic runs or queues now (running + waiting - lowtide's own in flight).
- ``LatencyLimit``, from latency alone (hosted APIs, engines without metrics, a scrape that
  fails): below the knee, more requests in flight make each token a little slower (a bigger
  batch per step); past it, the time per token grows as fast as the requests in flight do (they
  queue). The limit climbs while the time per token grows clearly slower than the limit
  (elasticity ``e = dln(latency) / dln(in flight)`` under ``theta``), then probes a step up and a
  step down around where it stopped, keeping a step only when its elasticity says so.

``AdaptiveLimit`` uses the first while the engine's metrics are fresh and the second otherwise,
and cuts the limit in half on a 429 or 503 (once per round trip), growing back from there.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

Clock = Callable[[], float]

#: Where the limit comes from now (the ``lowtide_backend_limit_source`` metric's label).
Source = Literal["fixed", "metrics", "latency"]

#: The first limit of an adaptive backend before anything is known of it.
INITIAL: Final = 8
#: A 429 or 503 multiplies the limit by this (at most once per round trip).
CUT: Final = 0.5


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handed out when a request is sent, handed back with what came of it."""

    sent_at: float
    #: The latency round the request is a sample of (None: not sampled).
    round: int | None = None


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """An engine's own counts, summed over its models: requests running and waiting."""

    running: int
    waiting: int


class Limiter(Protocol):
    def limit(self) -> int:
        """Requests that may be in flight now (at least 1, at most the ceiling)."""

    def source(self) -> Source: ...

    def sent(self) -> Ticket: ...

    def answered(self, ticket: Ticket, latency: float, tokens: int) -> None:
        """A 2xx came back after ``latency`` seconds with ``tokens`` output tokens (0: not
        known)."""

    def done(self, ticket: Ticket) -> None:
        """The request ended without a latency sample (another status, no answer)."""

    def overloaded(self, ticket: Ticket) -> bool:
        """429, 503 or a timeout: the backend says it has too much. True if the limit was cut
        (once per round trip: not for requests sent before the last cut)."""

    def observe(self, load: EngineLoad, own: int) -> None:
        """A scrape of the engine's metrics, with lowtide's own requests in flight then."""

    def unobserved(self) -> None:
        """A scrape failed."""

    @property
    def learning(self) -> bool:
        """Still finding the engine's capacity from its metrics (scrape more often)."""


class FixedLimit:
    """``concurrency = "fixed"``: always the ceiling."""

    def __init__(self, ceiling: int, clock: Clock) -> None:
        self.ceiling, self.clock = ceiling, clock

    def limit(self) -> int:
        return self.ceiling

    def source(self) -> Source:
        return "fixed"

    def sent(self) -> Ticket:
        return Ticket(self.clock())

    def answered(self, ticket: Ticket, latency: float, tokens: int) -> None:
        return None

    def done(self, ticket: Ticket) -> None:
        return None

    def overloaded(self, ticket: Ticket) -> bool:
        return False

    def observe(self, load: EngineLoad, own: int) -> None:
        return None

    def unobserved(self) -> None:
        return None

    @property
    def learning(self) -> bool:
        return False


def _clamp(value: float, ceiling: int) -> float:
    return max(1.0, min(float(ceiling), value))


# --- from the engine's metrics ---------------------------------------------------------------


class EngineLoadLimit:
    """The limit from the engine's running and waiting counts (see the module docstring).

    ``capacity`` is learned. First, when requests stayed waiting at ``LEARN_SCRAPES`` scrapes in
    a row while the engine ran as many as it ever has, as the most seen running then (a request
    that merely arrived between two steps waits for one step, not for a run of scrapes; nor does
    a queue while the engine runs fewer than before say how many it can run). From there it
    rises to any larger number seen running, and comes down by one whenever a queue stays over
    ``LOWER_SCRAPES`` scrapes while fewer than it run (the KV cache holds fewer now). Until it
    is known the limit climbs (``_climb``). After a while without a queue (``_probe``), one
    scrape interval is allowed an eighth more than the capacity, reserve included, to see
    whether the engine runs more (the capacity may have been learned short, or the engine may
    hold more now).
    """

    LEARN_SCRAPES: Final = 8
    LOWER_SCRAPES: Final = 5
    #: Requests waiting at this many scrapes in a row is a queue, for the probes.
    QUEUED_SCRAPES: Final = 2
    GROWTH: Final = 1.25
    PROBE_MIN: Final = 0.5
    PROBE_MAX: Final = 30.0

    def __init__(self, ceiling: int, reserve: int, clock: Clock, initial: int = INITIAL) -> None:
        self.ceiling, self.reserve, self.clock = ceiling, reserve, clock
        self.capacity: int | None = None
        self.value = _clamp(initial, ceiling)
        self.foreign = 0
        self._waits: deque[tuple[int, int]] = deque(
            maxlen=max(self.LEARN_SCRAPES, self.LOWER_SCRAPES)
        )
        self._calm_since = clock()
        self._probing = False
        self._probe_every = self.PROBE_MIN
        self._probe_base = 0
        self._most_run = 0

    def limit(self) -> int:
        return int(self.value)

    @property
    def learning(self) -> bool:
        """The capacity is not known yet (the scraper then reads the engine more often)."""
        return self.capacity is None

    def observe(self, load: EngineLoad, own: int) -> None:
        now = self.clock()
        self._waits.append((load.running, load.waiting))
        recent = list(self._waits)
        # Not lowtide's: what the engine runs and queues beyond lowtide's requests. (lowtide's
        # own count includes answers it has not read yet, which the engine no longer counts: so
        # this can come out below 0. It is not let below 0: those answers are read within
        # moments, and the slots they free would then be filled twice.)
        others = self.foreign = max(0, load.running + load.waiting - own)
        queued = self._queued(recent, self.QUEUED_SCRAPES)
        self._learn(load.running, recent)
        if self.capacity is None:
            self._climb(own, load.waiting)
        elif self._probe(queued, own, now):
            # May it run an eighth more (at least one)? The reserve is lent for one interval.
            self.value = self.capacity + max(1, self.capacity // 8) - others
        else:
            self.value = self.capacity - self.reserve - others
        self.value = _clamp(self.value, self.ceiling)

    @staticmethod
    def _queued(recent: list[tuple[int, int]], scrapes: int) -> bool:
        """Something waited at each of the last ``scrapes`` scrapes."""
        return len(recent) >= scrapes and all(w > 0 for _, w in recent[-scrapes:])

    def _climb(self, own: int, waiting: int) -> None:
        """Before the capacity is known: a quarter more per scrape while lowtide uses the
        whole limit and nothing waits (a queue holds the climb until it is gone, or until it
        has lasted long enough to tell the capacity)."""
        if own >= self.limit() - 1 and waiting == 0:
            self.value += max(1.0, self.value * (self.GROWTH - 1))

    def _learn(self, running: int, recent: list[tuple[int, int]]) -> None:
        if self.capacity is None:
            top = max(r for r, _ in recent[-self.LEARN_SCRAPES :])
            if self._queued(recent, self.LEARN_SCRAPES) and top >= self._most_run:
                self.capacity = top
                self._calm_since = self.clock()  # no probe before the queue is gone a while
            self._most_run = max(self._most_run, running)
            return
        if running > self.capacity:
            self.capacity = running
        elif self._queued(recent, self.LOWER_SCRAPES):
            # A queue that stays while fewer run than the capacity: the engine holds fewer
            # now (its KV cache is full with longer sequences), one less at a time.
            seen = max(r for r, _ in recent[-self.LOWER_SCRAPES :])
            if seen < self.capacity:
                self.capacity -= 1

    def _probe(self, queued: bool, own: int, now: float) -> bool:
        """Whether this scrape interval may run more than the capacity (see the class
        docstring). A probe that found more is followed by another ``PROBE_MIN`` seconds
        later (a capacity learned short comes up quickly); one that found nothing doubles
        the wait, up to ``PROBE_MAX``."""
        if self._probing:
            self._probing = False
            found = self.capacity is not None and self.capacity > self._probe_base
            self._probe_every = (
                self.PROBE_MIN if found else min(self.PROBE_MAX, self._probe_every * 2)
            )
            self._calm_since = now
            return False
        if queued:
            self._calm_since = now
            return False
        if now - self._calm_since >= self._probe_every and own >= self.limit() - 1:
            self._probing = True
            self._probe_base = self.capacity or 0
        return self._probing


# --- from latency ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Round:
    """The requests of one level: the first ``need`` sent at it are its samples."""

    number: int
    need: int
    started: float
    sampled: int = 0
    returned: int = 0
    area: float = 0.0  # in-flight x seconds since ``started``
    peak: int = 0
    samples: list[float] | None = None

    def __post_init__(self) -> None:
        self.samples = []


class LatencyLimit:
    """The limit from latency alone (see the module docstring).

    Rounds: the first ``need`` requests sent at a level are its samples (taking the first to
    *return* would take the ones that did not queue), and the round ends when they are all
    back. Its figures: the time per output token (a trimmed mean; per request when no token
    count comes back), and the requests in flight averaged over the round's time (what the
    backend carried, whatever the limit said). Two rounds at different levels give the
    elasticity ``e``.

    Climbing: each round a quarter higher while ``e < THETA_CLIMB``. Then steady: a round at
    the base level, a probe a step up (kept if ``e < THETA``), the base again, a probe a step
    down (kept if ``e > THETA``: the latency fell as fast as the requests did, so they were
    queueing). A base round clearly slower than the last one at the same level (the backend got
    busier) sends the next probe down.
    """

    GROWTH: Final = 1.25
    STEP: Final = 1.15
    THETA: Final = 0.8
    THETA_CLIMB: Final = 0.65
    DRIFT: Final = 1.2
    TRIM: Final = 0.1
    NEED_MIN: Final = 4
    CLIMB_SAMPLES: Final = 0.75

    def __init__(self, ceiling: int, clock: Clock, initial: int = INITIAL) -> None:
        self.ceiling, self.clock = ceiling, clock
        self.base = _clamp(initial, ceiling)
        self.value = self.base
        self.climbing = True
        self.direction: Literal["up", "down"] = "up"
        self.probing = False
        self._base_seen: tuple[float, float] | None = None  # (in flight, time per token)
        self.in_flight = 0
        self._number = 0
        self._last = clock()
        self._round = self._new_round()

    def limit(self) -> int:
        return round(self.value)

    def reset(self, level: float, *, climbing: bool = False) -> None:
        """Start at ``level`` (the limit another source worked to until now), steady or
        climbing from there."""
        self.base = self.value = _clamp(level, self.ceiling)
        self.climbing, self.probing, self.direction = climbing, False, "up"
        self._base_seen = None
        self._round = self._new_round()

    def cut(self, factor: float) -> None:
        self.base = self.value = _clamp(self.value * factor, self.ceiling)
        self.probing, self.direction, self._base_seen = False, "up", None
        self._round = self._new_round()

    # -- requests

    def sent(self, ticket_time: float) -> int | None:
        self._tick(ticket_time)
        self.in_flight += 1
        r = self._round
        r.peak = max(r.peak, self.in_flight)
        if r.sampled < r.need:
            r.sampled += 1
            return r.number
        return None

    def ended(self, number: int | None, sample: float | None) -> None:
        now = self.clock()
        self._tick(now)
        self.in_flight = max(0, self.in_flight - 1)
        r = self._round
        if number != r.number:
            return
        r.returned += 1
        if sample is not None and r.samples is not None:
            r.samples.append(sample)
        if r.returned >= r.sampled >= r.need:
            self._decide(now)

    def _tick(self, now: float) -> None:
        self._round.area += self.in_flight * max(0.0, now - self._last)
        self._last = max(self._last, now)

    def _new_round(self) -> _Round:
        self._number += 1
        # Climbing rounds sample three quarters of a level's requests, to climb sooner; steady
        # ones all of them, for the finer verdicts near the knee.
        share = self.CLIMB_SAMPLES if self.climbing else 1.0
        need = max(self.NEED_MIN, int(self.limit() * share))
        return _Round(self._number, need, self._last, peak=self.in_flight)

    # -- decisions

    def _figures(self, now: float) -> tuple[float, float] | None:
        r = self._round
        samples = sorted(r.samples or ())
        if not samples or now <= r.started:
            return None
        cut = int(len(samples) * self.TRIM)
        kept = samples[cut : len(samples) - cut] or samples
        return r.area / (now - r.started), sum(kept) / len(kept)

    def _decide(self, now: float) -> None:
        figures = self._figures(now)
        limited = self._round.peak >= self.limit()
        if figures is not None and figures[0] > 0 and figures[1] > 0:
            if not self.probing:
                self._after_base(figures, limited)
            else:
                self._after_probe(figures, limited)
        self.value = _clamp(self.value, self.ceiling)
        self._round = self._new_round()

    def _probe_level(self) -> float:
        factor = self.GROWTH if self.climbing else self.STEP
        if self.direction == "up":
            return min(float(self.ceiling), max(self.base + 1, self.base * factor))
        return max(1.0, min(self.base - 1, self.base / factor))

    def _after_base(self, seen: tuple[float, float], limited: bool) -> None:
        if not limited and self.direction == "up":
            return  # lowtide did not fill the limit: nothing to learn about a higher one
        last = self._base_seen
        same_level = last is not None and abs(math.log(seen[0] / last[0])) < 0.05
        if same_level and last is not None and seen[1] > last[1] * self.DRIFT:
            self.direction = "down"  # the same level got slower: the backend is busier
        self._base_seen = seen
        self.probing = True
        self.value = self._probe_level()

    def _after_probe(self, seen: tuple[float, float], limited: bool) -> None:
        assert self._base_seen is not None
        base_n, base_x = self._base_seen
        dn = math.log(seen[0] / base_n)
        self.probing = False
        if abs(dn) < 0.03 or (self.direction == "up" and not limited):
            self.value = self.base  # the probe did not change the load: no verdict
            return
        e = math.log(seen[1] / base_x) / dn
        theta = self.THETA_CLIMB if self.climbing else self.THETA
        keep = e < theta if self.direction == "up" else e > theta
        if keep:
            self.base, self._base_seen = seen[0], seen
            self.probing = True  # go on the same way, this round being the new base's
            self.value = self._probe_level()
            return
        self.climbing = False
        self.direction = "down" if self.direction == "up" else "up"
        self.value = self.base


# --- both, and the cut on 429 / 503 ------------------------------------------------------------


class AdaptiveLimit:
    """``concurrency = "adaptive"``: from the engine's metrics while they are fresh (``_fresh``),
    from latency otherwise; a 429, 503 or timeout halves the limit."""

    #: Metrics older than this many scrape intervals count as gone (a second: on a busy
    #: machine a scrape may come late, and slightly old counts beat guessing from latency).
    STALE_SCRAPES: Final = 10

    def __init__(
        self,
        ceiling: int,
        reserve: int,
        clock: Clock,
        *,
        scrape_interval: float,
        initial: int = INITIAL,
    ) -> None:
        self.ceiling, self.clock = ceiling, clock
        self.gauge = EngineLoadLimit(ceiling, reserve, clock, initial)
        self.latency = LatencyLimit(ceiling, clock, initial)
        self._stale_after = scrape_interval * self.STALE_SCRAPES
        self._observed_at: float | None = None
        self._metrics_ok = False
        self._cut_at = -math.inf
        #: After a cut, the metrics' limit may not exceed this; it grows by one per round trip.
        self._cap = math.inf
        self._using_metrics = False

    @property
    def in_flight(self) -> int:
        """lowtide's own requests sent to the backend and not back yet."""
        return self.latency.in_flight

    @property
    def capacity(self) -> int | None:
        """The engine's capacity learned from its metrics (None: not known)."""
        return self.gauge.capacity

    @property
    def learning(self) -> bool:
        return self.gauge.learning

    def _fresh(self) -> bool:
        """Whether the engine's metrics may be used: the last scrape worked, and while lowtide
        has requests there (idle, nothing is scraped), it is recent."""
        at = self._observed_at
        if at is None or not self._metrics_ok:
            return False
        return self.in_flight == 0 or self.clock() - at <= self._stale_after

    def source(self) -> Source:
        fresh = self._fresh()
        if fresh != self._using_metrics:
            self._using_metrics = fresh
            if not fresh:
                # Metrics gone: latency takes over from where they left the limit (climbing
                # on if they had not found the engine's capacity yet).
                self.latency.reset(self.gauge.value, climbing=self.gauge.learning)
        return "metrics" if fresh else "latency"

    def limit(self) -> int:
        if self.source() == "metrics":
            return int(max(1, min(self.gauge.limit(), self._cap)))
        return self.latency.limit()

    def sent(self) -> Ticket:
        now = self.clock()
        return Ticket(now, self.latency.sent(now))

    def answered(self, ticket: Ticket, latency: float, tokens: int) -> None:
        per_token = latency / tokens if tokens > 0 else latency
        self.latency.ended(ticket.round, per_token if latency > 0 else None)
        if self._cap < math.inf:
            self._cap += 1.0 / max(1.0, self._cap)  # additive increase: one per round trip

    def done(self, ticket: Ticket) -> None:
        self.latency.ended(ticket.round, None)

    def overloaded(self, ticket: Ticket) -> bool:
        self.latency.ended(ticket.round, None)
        if ticket.sent_at < self._cut_at:
            return False  # sent before the last cut: that cut already answered this overload
        self._cut_at = self.clock()
        current = self.limit()
        self.latency.cut(CUT)
        self._cap = max(1.0, current * CUT)
        return True

    def observe(self, load: EngineLoad, own: int) -> None:
        self._observed_at = self.clock()
        self._metrics_ok = True
        self.gauge.observe(load, own)
        if self._cap >= self.ceiling:
            self._cap = math.inf

    def unobserved(self) -> None:
        self._metrics_ok = False
