"""Which fault a request gets, how long its answer waits, and the Retry-After pauses announced.

Every random choice comes from one generator (``Dice.rng``), drawn in the same order for every
request, so that a seed replays a run exactly.
"""

from __future__ import annotations

import enum
import random
from typing import Final

from lowtide.testing.upstream.config import UpstreamConfig
from lowtide.testing.upstream.stats import Stats


class Fault(enum.Enum):
    NONE = 0
    DROP = 1
    HANG = 2
    RATE_LIMIT = 3
    ERROR = 4
    GARBAGE = 5


# The order the cumulative thresholds are laid out in, see Dice.fault.
_FAULT_ORDER: Final = (Fault.DROP, Fault.HANG, Fault.RATE_LIMIT, Fault.ERROR, Fault.GARBAGE)


def _thresholds(cfg: UpstreamConfig) -> tuple[float, ...]:
    rates = (cfg.drop_rate, cfg.hang_rate, cfg.rate_429, cfg.error_rate, cfg.garbage_rate)
    edges, total = [], 0.0
    for rate in rates:
        total += rate
        edges.append(total)
    return tuple(edges)


def has(text: str, marker: str) -> bool:
    """Whether a line's text carries a per-line fault marker (an empty marker is off)."""
    return bool(marker) and marker in text


class Dice:
    """The random draws of the fake: the fault, the jitter, which error, which garbage."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self.rng = random.Random(cfg.seed)
        self._edges = _thresholds(cfg)

    def configure(self, cfg: UpstreamConfig, *, reseed: bool) -> None:
        self._edges = _thresholds(cfg)
        if reseed:
            self.rng.seed(cfg.seed)

    def fault(self) -> Fault:
        # One draw per request, so the rates are exact fractions of one shared die.
        r = self.rng.random()
        edges = self._edges
        if r >= edges[-1]:
            return Fault.NONE
        for fault, edge in zip(_FAULT_ORDER, edges, strict=True):
            if r < edge:
                return fault
        return Fault.NONE

    def delay(self, key: str, cfg: UpstreamConfig) -> float:
        """Seconds from the request's arrival to its answer: latency, jitter, the slow marker."""
        delay = cfg.latency
        if cfg.jitter:
            delay += self.rng.uniform(-cfg.jitter, cfg.jitter)
        if has(key, cfg.slow_contains):
            delay += cfg.slow_seconds
        return delay


class Pauses:
    """The Retry-After pauses announced with 429s, to count the requests that came early.

    Times are ``time.monotonic()`` seconds. ``until`` is the end of the latest pause announced
    to anyone, ``announced`` when that was; each line's own pause is kept by its key.
    """

    def __init__(self) -> None:
        self.until = 0.0
        self.announced = 0.0
        self._by_key: dict[str, float] = {}

    def clear(self) -> None:
        self._by_key.clear()
        self.until = 0.0

    def announce(self, key: str, now: float, seconds: float) -> None:
        until = now + seconds
        if until > self.until:
            self.until, self.announced = until, now
        self._by_key[key] = until

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now)

    def note_arrival(self, now: float, grace_ms: float, stats: Stats) -> None:
        """Count a request that arrived while a pause was in force."""
        ahead = self.until - now
        # A request that arrives within the grace after a 429 was sent was already on its way
        # (the client could not know yet): it is in flight, not early.
        if ahead > 0 and now - self.announced > grace_ms / 1000.0:
            stats.early_requests += 1
            stats.early_max_ms = max(stats.early_max_ms, ahead * 1000.0)

    def note_key(self, key: str, now: float, stats: Stats) -> None:
        """Count the line's request, and whether it came inside its own line's pause."""
        stats.per_key[key] += 1
        until = self._by_key.get(key)
        if until is None:
            return
        if until > now:
            stats.early_same_key += 1
        else:
            del self._by_key[key]
