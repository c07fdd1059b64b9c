"""Request and token budgets per rolling minute, as hosted APIs enforce them (429 beyond).

A request is charged at its arrival: one request, and ``prompt tokens + max_tokens`` tokens
(what OpenAI and DashScope count against a tokens-per-minute limit before the answer is known).
It is admitted only if, with it, the requests and the tokens admitted in the last 60 model
seconds stay within ``rpm`` and ``tpm``; a refused request costs nothing, and is told how long
until enough of the window has expired for it to pass.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lowtide.testing.engine_sim.config import BUDGET_WINDOW_S


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    retry_after: float  # model seconds until this request would pass (0 when ok)
    limit: str  # "requests" or "tokens": which limit refused it ("" when ok)
    remaining_requests: int  # after this request (if admitted), within the window
    remaining_tokens: int
    reset_requests: float  # model seconds until the window has room for a request again
    reset_tokens: float


class RollingBudget:
    """``rpm`` requests and ``tpm`` tokens per rolling window (0: that limit is off)."""

    def __init__(self, rpm: int, tpm: int, window: float = BUDGET_WINDOW_S) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.window = window
        self._log: deque[tuple[float, int]] = deque()  # (admitted at, tokens), oldest first
        self._tokens = 0

    @property
    def active(self) -> bool:
        return self.rpm > 0 or self.tpm > 0

    def clear(self) -> None:
        self._log.clear()
        self._tokens = 0

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] <= now - self.window:
            self._tokens -= self._log.popleft()[1]

    def _wait_for_requests(self, now: float) -> float:
        """Seconds until one more request fits (0 if it fits now)."""
        if not self.rpm or len(self._log) < self.rpm:
            return 0.0
        # The (len - rpm + 1) oldest entries must expire first.
        return self._log[len(self._log) - self.rpm][0] + self.window - now

    def _wait_for_tokens(self, now: float, tokens: int) -> float:
        if not self.tpm or self._tokens + tokens <= self.tpm:
            return 0.0
        if tokens > self.tpm:
            return self.window  # never passes: the hosted APIs answer 429 all the same
        excess, freed = self._tokens + tokens - self.tpm, 0
        for at, charged in self._log:
            freed += charged
            if freed >= excess:
                return at + self.window - now
        return self.window  # unreachable: the log holds every charged token

    def try_admit(self, now: float, tokens: int) -> Verdict:
        self._expire(now)
        wait_r = self._wait_for_requests(now)
        wait_t = self._wait_for_tokens(now, tokens)
        ok = wait_r <= 0 and wait_t <= 0
        if ok:
            self._log.append((now, tokens))
            self._tokens += tokens
        limit = "" if ok else ("requests" if wait_r >= wait_t else "tokens")
        return Verdict(
            ok=ok,
            retry_after=max(wait_r, wait_t, 0.0),
            limit=limit,
            remaining_requests=max(0, self.rpm - len(self._log)) if self.rpm else 0,
            remaining_tokens=max(0, self.tpm - self._tokens) if self.tpm else 0,
            reset_requests=max(0.0, self._wait_for_requests(now)),
            reset_tokens=max(0.0, self._wait_for_tokens(now, 1)),
        )
