"""``concurrency = "adaptive"``: the engine's metrics while they are fresh, else latency, and a
cut on 429 / 503 / timeout (``AdaptiveLimit``)."""

from __future__ import annotations

import math
from typing import Final

from lowtide.engine.limits.base import CUT, INITIAL, Clock, EngineLoad, Source, Ticket
from lowtide.engine.limits.gauge import EngineLoadLimit
from lowtide.engine.limits.latency import LatencyLimit


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
        return "metrics" if self._fresh() else "latency"

    def _switch(self) -> None:
        """Hand over between the sources (on the engine's side only: ``limit`` and ``source``
        change nothing, so that another thread may read them)."""
        fresh = self._fresh()
        if fresh != self._using_metrics:
            self._using_metrics = fresh
            if not fresh:
                # Metrics gone: latency takes over from where they left the limit (climbing
                # on if they had not found the engine's capacity yet).
                self.latency.reset(self.gauge.value, climbing=self.gauge.learning)

    def limit(self) -> int:
        if self._fresh() or self._using_metrics:
            # (Metrics just gone, and latency not handed over yet: where they left it.)
            return int(max(1, min(self.gauge.limit(), self._cap)))
        return self.latency.limit()

    def sent(self) -> Ticket:
        self._switch()
        now = self.clock()
        return Ticket(now, self.latency.sent(now))

    def answered(self, ticket: Ticket, latency: float, tokens: int) -> None:
        self.gauge.ended()
        per_token = latency / tokens if tokens > 0 else latency
        self.latency.ended(ticket.round, per_token if latency > 0 else None)
        if self._cap < math.inf:
            self._cap += 1.0 / max(1.0, self._cap)  # additive increase: one per round trip

    def done(self, ticket: Ticket) -> None:
        self.gauge.ended()
        self.latency.ended(ticket.round, None)

    def overloaded(self, ticket: Ticket) -> bool:
        self.gauge.ended()
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
        self._switch()

    def unobserved(self) -> None:
        self._metrics_ok = False
        self._switch()
