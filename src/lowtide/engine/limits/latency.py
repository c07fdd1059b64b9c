"""The limit from latency alone: rounds at two levels compared by the elasticity of the time
per output token (``LatencyLimit``; the package docstring says why)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from lowtide.engine.limits.base import INITIAL, Clock, clamp


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
    """The limit from latency alone (see the package docstring).

    Rounds: the first ``need`` requests sent at a level are its samples (taking the first to
    *return* would take the ones that did not queue), and the round ends when they are all
    back. Its figures: the time per output token (a trimmed mean; per request when no token
    count comes back), and the requests in flight averaged over the round's time (what the
    backend carried, whatever the limit said). Two rounds at different levels give the
    elasticity ``e``.

    Climbing: each round a quarter higher while ``e < THETA_CLIMB`` (a refused step is
    measured again once before the climb ends: a round of a few samples can mislead). Then
    steady: a round at
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
    NEED_MIN: Final = 8
    #: Climbing stops at the second refused step up in a row.
    CLIMB_REFUSALS: Final = 2
    CLIMB_SAMPLES: Final = 0.75

    def __init__(self, ceiling: int, clock: Clock, initial: int = INITIAL) -> None:
        self.ceiling, self.clock = ceiling, clock
        self.base = clamp(initial, ceiling)
        self.value = self.base
        self.climbing = True
        self._refused = 0
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
        self.base = self.value = clamp(level, self.ceiling)
        self.climbing, self.probing, self.direction = climbing, False, "up"
        self._base_seen = None
        self._round = self._new_round()

    def cut(self, factor: float) -> None:
        self.base = self.value = clamp(self.value * factor, self.ceiling)
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
        self.value = clamp(self.value, self.ceiling)
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
            self._refused = 0
            return
        self.value = self.base
        self._refused += 1
        if self.climbing and self._refused < self.CLIMB_REFUSALS:
            return  # one refusal may be noise (a few samples): the base again, then again up
        self.climbing = False
        self._refused = 0
        self.direction = "down" if self.direction == "up" else "up"
