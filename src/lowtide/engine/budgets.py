"""Requests and tokens per minute: lowtide paces its sends to a backend so that neither its
``rpm`` nor its ``tpm`` is exceeded in any rolling minute, as OpenAI and DashScope count them
(a request counts when it arrives: one request, and its prompt tokens + ``max_tokens``).

A request waits for room before it is sent, first come first served (it holds its concurrency
slot meanwhile). Its tokens are estimated (``lowtide.engine.tokens``) and corrected when its
answer says what it used; a 429 frees what it was charged (a refused request costs nothing
upstream) and holds every send until its ``Retry-After``.

One process (SQLite) keeps the rolling minute in memory (``RollingWindow``): every send is
recorded with its time. A fleet (PostgreSQL) shares the budget through the database
(``lowtide.store.budgets``): each worker takes a small slice of it at a time (a thirtieth of the
minute's requests and tokens, to be sent within ``window / 30`` seconds), uses it locally, and
gives back what it did not use when it takes the next. A slice counts against the budget from
when it is taken until a minute after the end of its use, so that the fleet never sends more
than the budget in any minute; the price is up to a thirtieth of the budget, idle in the slices.

The minute is counted ``WINDOW_MARGIN`` longer than the backend's (a send reaches it a little
after lowtide counts it), and tokens fill at most ``1 - TOKEN_HEADROOM`` of ``tpm`` (estimates of
requests still in flight may be a little short).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from lowtide import metrics
from lowtide.engine.tokens import Estimate, TokenEstimator, read_prompt
from lowtide.store import Store

logger = logging.getLogger(__name__)

WINDOW: Final = 60.0
WINDOW_MARGIN: Final = 0.02
TOKEN_HEADROOM: Final = 0.01
#: A fleet worker's slice: this fraction of the minute's budget, to use within as much of it.
SLICES_PER_WINDOW: Final = 30
#: Seconds to wait before asking again when the database had no slice to give.
MIN_RETRY: Final = 0.05
#: The requests of a slice when the backend has no rpm.
UNBOUNDED: Final = 1_000_000

Clock = Callable[[], float]
#: ``await tokenize(payload)``: the token count of a ``/tokenize`` body (a prompt's messages or
#: text, ``lowtide.engine.tokens.Prompt.tokenizable``) from the backend, or None.
Tokenize = Callable[[dict[str, Any]], Awaitable[int | None]]


@dataclass(slots=True, eq=False)
class Entry:
    """One send as the rolling window counts it."""

    at: float
    tokens: int
    requests: int = 1


class RollingWindow:
    """Sends of the last ``window`` seconds (pure: the clock is injected)."""

    def __init__(self, rpm: int, tpm: int, window: float, clock: Clock) -> None:
        self.rpm = rpm
        self.tpm = math.floor(tpm * (1 - TOKEN_HEADROOM)) if tpm else 0
        self.span = window * (1 + WINDOW_MARGIN)
        self.clock = clock
        self.requests = self.tokens = 0
        self.blocked_until = -math.inf
        self._log: deque[Entry] = deque()

    def _expire(self, now: float) -> None:
        while self._log and self._log[0].at <= now - self.span:
            gone = self._log.popleft()
            self.requests -= gone.requests
            self.tokens -= gone.tokens

    def wait(self, tokens: int) -> float:
        """Seconds until a send of ``tokens`` fits (0: now)."""
        now = self.clock()
        self._expire(now)
        waits = [self.blocked_until - now, 0.0]
        if self.rpm and self.requests + 1 > self.rpm:
            waits.append(self._freed_at(lambda e: e.requests, self.requests + 1 - self.rpm) - now)
        if self.tpm:
            # A request larger than the whole budget goes alone into an empty window: the
            # backend decides (hosted APIs refuse it every time, and say so).
            excess = self.tokens + min(tokens, self.tpm) - self.tpm
            if excess > 0:
                waits.append(self._freed_at(lambda e: e.tokens, excess) - now)
        return max(waits)

    def _freed_at(self, amount: Callable[[Entry], int], needed: int) -> float:
        """When the oldest sends that add up to ``needed`` have left the window."""
        freed = 0
        for entry in self._log:
            freed += amount(entry)
            if freed >= needed:
                return entry.at + self.span
        return self.clock() + self.span  # unreachable: the log holds every charge

    def take(self, tokens: int) -> Entry:
        now = self.clock()
        self._expire(now)
        entry = Entry(now, tokens)
        self._log.append(entry)
        self.requests += 1
        self.tokens += tokens
        return entry

    def adjust(self, entry: Entry, tokens: int, requests: int = 1) -> None:
        """What ``entry`` really counts (an answer's usage; 0 and 0 for a refused send)."""
        if entry.at > self.clock() - self.span:  # still in the window
            self.tokens += tokens - entry.tokens
            self.requests += requests - entry.requests
        entry.tokens, entry.requests = tokens, requests

    def block(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, self.clock() + seconds)


@dataclass(slots=True)
class Slice:
    """A fleet worker's share of the budget, held until ``until`` (wall clock)."""

    id: int | None = None
    until: float = 0.0
    requests: int = 0
    tokens: int = 0
    used_requests: int = 0
    used_tokens: int = 0

    def fits(self, tokens: int, now: float) -> bool:
        return (
            self.id is not None
            and now < self.until
            and self.used_requests < self.requests
            and self.used_tokens + tokens <= self.tokens
        )


@dataclass(slots=True, eq=False)
class Charge:
    """What one send was charged, for its correction."""

    estimate: Estimate
    tokens: int
    entry: Entry | None = None
    slice_id: int | None = None
    waited: float = field(default=0.0)


class Budget:
    """One backend's rpm/tpm budget (see the module docstring).

    ``store`` and ``owner`` given: the fleet's shared budget, in slices; otherwise this
    process's own rolling window."""

    def __init__(
        self,
        backend: str,
        rpm: int,
        tpm: int,
        *,
        window: float = WINDOW,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        store: Store | None = None,
        owner: str | None = None,
        tokenize: Tokenize | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` and ``sleep`` go together (the tests move a fake clock in ``sleep``);
        ``wall`` is the wall clock the fleet's slices are dated by."""
        self.backend, self.rpm, self.tpm = backend, rpm, tpm
        self.sleep = sleep
        self.window = RollingWindow(rpm, tpm, window, clock)
        self.clock, self.wall = clock, wall
        self.store, self.owner = store, owner
        self.tokenize = tokenize
        self.estimator = TokenEstimator()
        self.slice = Slice()
        self._slice_seconds = window / SLICES_PER_WINDOW
        self._lock = asyncio.Lock()
        self._waited = metrics.BUDGET_WAIT_SECONDS.labels(backend)
        self._used_requests = metrics.BUDGET_USED.labels(backend, "requests")
        self._used_tokens = metrics.BUDGET_USED.labels(backend, "tokens")
        self._ratio = metrics.TOKENS_PER_BYTE.labels(backend)

    @property
    def shared(self) -> bool:
        return self.store is not None

    # -- before the send

    async def acquire(self, body: bytes, batch: str) -> Charge:
        """Wait until the budget has room for ``body`` (first come, first served), and charge
        it."""
        estimate = await self._estimate(body, batch)
        tokens = estimate.tokens if self.tpm else 0
        started = self.clock()
        async with self._lock:
            if self.shared:
                charge = await self._from_slice(estimate, tokens)
            else:
                charge = await self._from_window(estimate, tokens)
        charge.waited = self.clock() - started
        self._waited.inc(charge.waited)
        self._show()
        return charge

    async def _estimate(self, body: bytes, batch: str) -> Estimate:
        prompt = read_prompt(body)
        est = self.estimator
        payload = prompt.tokenizable
        if self.tpm and self.tokenize is not None and est.wants_tokenize(batch, prompt):
            assert payload is not None  # wants_tokenize says so
            count = await self.tokenize(payload)
            if count is None:
                est.tokenize_works = False
            else:
                est.calibrate(batch, prompt, count)
        return est.estimate(batch, prompt)

    async def _from_window(self, estimate: Estimate, tokens: int) -> Charge:
        # Sleep until the window says there is room: sends leave it at known times, so a
        # timer, not an event, is what wakes the head of the queue.
        while True:
            wait = self.window.wait(tokens)
            if wait <= 0:
                return Charge(estimate, tokens, entry=self.window.take(tokens))
            await self.sleep(wait)

    async def _from_slice(self, estimate: Estimate, tokens: int) -> Charge:
        while True:
            if (blocked := self.window.blocked_until - self.clock()) > 0:
                await self.sleep(blocked)
                continue
            if self.slice.fits(tokens, self.wall()):
                self.slice.used_requests += 1
                self.slice.used_tokens += tokens
                return Charge(estimate, tokens, slice_id=self.slice.id)
            retry = await self._next_slice(tokens)
            if retry > 0:
                await self.sleep(retry)

    async def _next_slice(self, tokens: int) -> float:
        """Give back the rest of the current slice and take a new one; seconds to wait when
        the database had none to give."""
        assert self.store is not None and self.owner is not None
        now = self.wall()
        old = self.slice
        settle = (old.id, old.used_requests, old.used_tokens) if old.id is not None else None
        # Without an rpm, a slice is bounded by its tokens alone.
        want_requests = max(1, math.ceil(self.rpm / SLICES_PER_WINDOW)) if self.rpm else UNBOUNDED
        want_tokens = max(tokens, math.ceil(self.window.tpm / SLICES_PER_WINDOW))
        until = now + self._slice_seconds
        grant = await self.store.claim_budget(
            self.backend,
            self.owner,
            settle,
            want_requests,
            want_tokens if self.tpm else 0,
            tokens,
            self.rpm,
            self.window.tpm,
            now,
            self.window.span,
            until,
        )
        self.slice = Slice(grant.slice_id, until, grant.requests, grant.tokens)
        if grant.slice_id is None:
            return max(MIN_RETRY, grant.retry_after)
        return 0.0

    # -- after it

    def answered(
        self, charge: Charge, status: int | None, prompt_tokens: int, output_tokens: int
    ) -> None:
        """What came back (``status`` None: no answer). A 2xx's usage corrects the charge."""
        if status is not None and 200 <= status < 300 and prompt_tokens > 0:
            used = self.estimator.answered(charge.estimate, prompt_tokens, output_tokens)
            self._correct(charge, used if self.tpm else 0, 1)
            self._ratio.set(self.estimator.backend.ratio() or 0.0)
        self._show()

    def unsent(self, charge: Charge) -> None:
        """The request was charged but not sent after all: it counts nothing."""
        self._correct(charge, 0, 0)
        self._show()

    def refused(self, charge: Charge, retry_after: float | None) -> None:
        """A 429: the backend counted nothing, and wants nothing until ``retry_after``."""
        self._correct(charge, 0, 0)
        self.window.block(retry_after if retry_after is not None else 1.0)
        self._show()

    def _correct(self, charge: Charge, tokens: int, requests: int) -> None:
        if charge.entry is not None:
            self.window.adjust(charge.entry, tokens, requests)
        elif charge.slice_id is not None and charge.slice_id == self.slice.id:
            self.slice.used_tokens += tokens - charge.tokens
            self.slice.used_requests += requests - 1
        elif tokens > charge.tokens:
            # Its slice was given back already: what it used beyond its charge comes out of
            # the current one (what it used less is lost: never more than the budget).
            self.slice.used_tokens += tokens - charge.tokens
        charge.tokens = tokens

    def _show(self) -> None:
        if self.shared:
            self._used_requests.set(self.slice.used_requests)
            self._used_tokens.set(self.slice.used_tokens)
        else:
            self._used_requests.set(self.window.requests)
            self._used_tokens.set(self.window.tokens)

    async def close(self) -> None:
        """Give the rest of this worker's slice back to the fleet."""
        old = self.slice
        if self.store is None or self.owner is None or old.id is None:
            return
        self.slice = Slice()
        await self.store.claim_budget(
            self.backend,
            self.owner,
            (old.id, old.used_requests, old.used_tokens),
            0,
            0,
            0,
            self.rpm,
            self.window.tpm,
            self.wall(),
            self.window.span,
            self.wall(),
        )
