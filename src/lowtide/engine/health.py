"""Whether each backend answers, as this engine sees it: up or down, since when, and why.

A backend goes *down* when ``DOWN_AFTER`` requests in a row get no answer at all (refused,
reset, timed out), or when a probe gets none. While it is down:

- its lines wait: the dispatcher gives them back without spending an attempt (for up to
  ``engine.outage_grace`` seconds of outage);
- nothing is sent to it during a pause, and each pause is twice the one before (0.5 s, 1 s,
  2 s... up to 30 s): one step per pause, however many requests were in flight when it went
  down;
- when a pause ends, one request goes out alone (the probe): any answer brings the backend up
  at once, at full speed; no answer starts the next, longer pause;
- the health monitor also asks it for ``GET /models`` every ``engine.probe_interval_down``
  seconds, so that a backend that is back is used again about that soon, whatever the pause.

Every backend is probed at start-up too, so that one that cannot be reached is reported before
a batch waits for it, and then every ``engine.probe_interval`` seconds while it is up. A change
of state is logged once, at WARNING, with its cause; never once per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lowtide import metrics
from lowtide.backends.base import Backend

logger = logging.getLogger(__name__)

#: Requests in a row without an answer that make a backend count as down.
DOWN_AFTER = 3
FIRST_PAUSE = 0.5
MAX_PAUSE = 30.0


@dataclass(slots=True)
class Health:
    """One backend's state. ``since`` is wall-clock time (shown to users); pauses use the
    monotonic clock, which a change of the system clock cannot move."""

    backend: str
    up: bool = True
    since: float = field(default_factory=time.time)
    #: Why it is down (the last failure); kept after it is back, for the record.
    error: str | None = None
    #: Requests in a row without an answer.
    failures: int = 0
    #: Pauses in a row since it went down.
    pauses: int = 0
    #: Monotonic times: when it went down, and when the current pause ends.
    down_at: float | None = None
    resume_at: float = 0.0
    #: When it last answered anything (a probe is not needed while requests get answers).
    answered_at: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def answered(self) -> bool:
        """A request or probe got an answer (any status). True if the backend was down."""
        self.failures = 0
        self.answered_at = self.clock()
        if self.up:
            return False
        outage = self.down_for()
        logger.warning(
            "backend %s answers again, after %.1f s down",
            self.backend,
            outage,
            extra={"action": "backend_up", "backend": self.backend, "seconds": outage},
        )
        self.up, self.since, self.pauses, self.down_at, self.resume_at = (
            True, time.time(), 0, None, 0.0
        )  # fmt: skip
        metrics.BACKEND_UP.labels(self.backend).set(1)
        return True

    def unanswered(self, error: str, sent_at: float) -> bool:
        """A request sent at ``sent_at`` (monotonic) got no answer. True if it went down."""
        self.failures += 1
        self.error = error
        if self.up:
            if self.failures < DOWN_AFTER:
                return False
            self._go_down()
            return True
        if sent_at >= self.resume_at:  # the probe sent when the last pause ended
            self.pauses += 1
            self._pause(min(MAX_PAUSE, FIRST_PAUSE * 2**self.pauses))
        return False  # else in flight from before the pause, which already counts it

    def probe_failed(self, error: str) -> bool:
        """A probe of the monitor got no answer. True if it went down."""
        self.error = error
        if not self.up:
            return False  # the pauses are for requests; the monitor only looks
        self._go_down()
        return True

    def free(self, now: float, in_flight: int, capacity: int) -> int:
        """Requests that may start now: none during a pause, one alone (the probe) after a
        pause while still down, else what ``capacity`` leaves."""
        if self.up:
            return max(0, capacity - in_flight)
        if now < self.resume_at:
            return 0
        return max(0, min(1, capacity) - in_flight)

    def quiet_for(self) -> float:
        """Seconds since it last answered."""
        return self.clock() - self.answered_at

    def down_for(self) -> float:
        """Seconds since it went down (0 while up)."""
        return 0.0 if self.down_at is None else self.clock() - self.down_at

    def _go_down(self) -> None:
        logger.warning(
            "backend %s is down: %s",
            self.backend,
            self.error,
            extra={"action": "backend_down", "backend": self.backend, "error": self.error},
        )
        self.up, self.since, self.pauses, self.down_at = False, time.time(), 0, self.clock()
        metrics.BACKEND_UP.labels(self.backend).set(0)
        self._pause(FIRST_PAUSE)

    def _pause(self, seconds: float) -> None:
        self.resume_at = self.clock() + seconds
        logger.info(
            "backend %s: next try in %.1f s",
            self.backend,
            seconds,
            extra={"action": "backend_pause", "backend": self.backend, "seconds": seconds},
        )


#: A backend to watch: its adapter, its health, and whether a ``Retry-After`` holds it now
#: (nothing, a probe included, is sent to a backend before the time it asked for).
Watched = tuple[Backend, Health, Callable[[], bool]]


class HealthMonitor:
    """Probes each backend at start-up and then periodically (see the module docstring): one
    that is up only when it has not answered anything for ``interval_up`` seconds.

    ``on_change(backend_name, up)`` is called when a probe changes a backend's state, so that
    the dispatcher can send again at once when one is back."""

    def __init__(
        self,
        backends: Sequence[Watched],
        *,
        interval_up: float,
        interval_down: float,
        on_change: Callable[[str, bool], None],
    ) -> None:
        self.backends = list(backends)
        self.interval_up, self.interval_down = interval_up, interval_down
        self.on_change = on_change
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Until ``stop()``: the engine counts a side task that ends early as a failure."""
        await asyncio.gather(self._stopping.wait(), *(self._watch(*w) for w in self.backends))

    def stop(self) -> None:
        self._stopping.set()

    async def probe_all(self) -> None:
        """One probe of every backend (start-up): trouble is reported before a batch waits."""
        await asyncio.gather(*(self._probe(b, h) for b, h, held in self.backends if not held()))

    async def _watch(self, backend: Backend, health: Health, held: Callable[[], bool]) -> None:
        while not self._stopping.is_set():
            wait = self.interval_up if health.up else self.interval_down
            try:
                await asyncio.wait_for(self._stopping.wait(), wait)
                return
            except TimeoutError:
                pass
            if held() or (health.up and health.quiet_for() < self.interval_up):
                continue
            await self._probe(backend, health)

    async def _probe(self, backend: Backend, health: Health) -> None:
        problem = await backend.probe()
        changed = health.answered() if problem is None else health.probe_failed(problem)
        if changed:
            self.on_change(backend.name, health.up)
