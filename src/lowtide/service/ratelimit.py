"""API rate limits per account and route class: fixed one-minute windows.

One process (SQLite mode) counts in memory: exact, and free. Several API processes (the
PostgreSQL fleet) count in the shared database, one upsert per request, so that the limit holds
across all of them (Redis would do too, but PostgreSQL is already a dependency of the fleet and
the control plane's rate is low: at most a few thousand requests a minute per account).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from lowtide.store import Store

WINDOW = 60  # seconds: limits are "per minute"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: float  # seconds until the window ends

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": f"{max(self.reset, 0.0):.0f}s",
        }


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int) -> Decision: ...


def _decide(count: int, limit: int, window: int, seconds: float, now: float) -> Decision:
    reset = (window + 1) * seconds - now
    return Decision(count <= limit, limit, max(0, limit - count), reset)


class MemoryRateLimiter:
    def __init__(self, window_seconds: float = WINDOW) -> None:
        self.seconds = window_seconds
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window, count)

    async def hit(self, key: str, limit: int) -> Decision:
        now = time.time()
        window = int(now // self.seconds)
        seen_window, count = self._counts.get(key, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._counts[key] = (window, count)
        return _decide(count, limit, window, self.seconds, now)


class StoreRateLimiter:
    def __init__(self, store: Store, window_seconds: float = WINDOW) -> None:
        self.store, self.seconds = store, window_seconds

    async def hit(self, key: str, limit: int) -> Decision:
        now = time.time()
        window = int(now // self.seconds)
        count = await self.store.rate_limit_hit(key, window, now)
        return _decide(count, limit, window, self.seconds, now)
