"""The limiters' common parts: what a request hands in and gets back, the engine's counts,
the protocol every limiter follows, and the fixed one (``concurrency = "fixed"``)."""

from __future__ import annotations

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


def clamp(value: float, ceiling: int) -> float:
    return max(1.0, min(float(ceiling), value))
