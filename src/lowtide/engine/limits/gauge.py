"""The limit from the engine's own metrics: its capacity, less ``reserve``, less what others
run and queue (``EngineLoadLimit``; the package docstring says why)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from lowtide.engine.limits.base import INITIAL, Clock, EngineLoad, clamp


@dataclass(slots=True)
class _Queue:
    """A run of scrapes that each saw requests waiting."""

    answers: int  # lowtide's requests ended before it began
    top: int  # the most seen running during it
    scrapes: int = 1


class EngineLoadLimit:
    """The limit from the engine's running and waiting counts (see the package docstring).

    ``capacity`` is learned. First, when requests stayed waiting at ``LEARN_SCRAPES`` scrapes in
    a row while lowtide's requests kept ending and the engine ran as many as it ever has, as the
    most seen running then (a request that merely arrived between two steps waits for one step,
    not for a run of scrapes; a queue while nothing ends is a stall; a queue while the engine
    runs fewer than before says nothing of how many it can run). From there it
    rises to any larger number seen running, and comes down by one whenever a queue stays over
    ``LOWER_SCRAPES`` scrapes while fewer than it run (the KV cache holds fewer now). Until it
    is known the limit climbs (``_climb``). After a while without a queue (``_probe``), one
    scrape interval is allowed more than the capacity, reserve included, to see whether the
    engine runs more (the capacity may have been learned short, or the engine may hold more
    now): an eighth more with nobody else on the engine, one more while others are.
    """

    LEARN_SCRAPES: Final = 8
    LOWER_SCRAPES: Final = 5
    #: lowtide's requests that must end while a queue lasts, for it to say the engine is full.
    ANSWERS_IN_QUEUE: Final = 2
    #: Requests waiting at this many scrapes in a row is a queue, for the probes.
    QUEUED_SCRAPES: Final = 2
    GROWTH: Final = 1.125
    PROBE_MIN: Final = 2.0
    PROBE_MAX: Final = 60.0

    def __init__(self, ceiling: int, reserve: int, clock: Clock, initial: int = INITIAL) -> None:
        self.ceiling, self.reserve, self.clock = ceiling, reserve, clock
        self.capacity: int | None = None
        self.value = clamp(initial, ceiling)
        self.foreign = 0
        self._running: deque[int] = deque(maxlen=self.LOWER_SCRAPES)
        self._queue: _Queue | None = None
        self._answers = 0
        self._calm_since = clock()
        self._probing = False
        self._probe_every = self.PROBE_MIN
        self._probe_base = 0
        self._most_run = 0
        self._near = False

    def limit(self) -> int:
        return int(self.value)

    @property
    def learning(self) -> bool:
        """The capacity is not known yet (the scraper then reads the engine more often)."""
        return self.capacity is None

    def ended(self) -> None:
        """One of lowtide's requests to the engine ended (the engine is making progress)."""
        self._answers += 1

    def observe(self, load: EngineLoad, own: int) -> None:
        now = self.clock()
        self._running.append(load.running)
        self._track_queue(load)
        # Not lowtide's: what the engine runs and queues beyond lowtide's requests. (lowtide's
        # own count includes answers it has not read yet, which the engine no longer counts: so
        # this can come out below 0. It is not let below 0: those answers are read within
        # moments, and the slots they free would then be filled twice.)
        others = self.foreign = max(0, load.running + load.waiting - own)
        self._learn(load.running)  # before _climb: it compares with the most run before
        queue = self._queue
        queued = queue is not None and queue.scrapes >= self.QUEUED_SCRAPES
        if self.capacity is None:
            self._climb(own, load, others)
        elif self._probe(queued, own, now):
            # May it run more? The reserve is lent for one interval: an eighth more with
            # nobody else on the engine, one more while others are (their slots stay theirs).
            more = 1 if others else max(1, self.capacity // 8)
            self.value = self.capacity + more - others
        else:
            self.value = self.capacity - self.reserve - others
        self.value = clamp(self.value, self.ceiling)

    def _track_queue(self, load: EngineLoad) -> None:
        if load.waiting == 0:
            self._queue = None
        elif self._queue is None:
            self._queue = _Queue(self._answers, load.running)
        else:
            self._queue.scrapes += 1
            self._queue.top = max(self._queue.top, load.running)

    def _full(self, scrapes: int) -> bool:
        """Requests have waited at ``scrapes`` scrapes in a row, while lowtide's requests kept
        ending: the engine is full. (Waiting while nothing ends is the engine, or this machine,
        stalling: it says nothing of how many the engine can run.)"""
        queue = self._queue
        return (
            queue is not None
            and queue.scrapes >= scrapes
            and self._answers - queue.answers >= self.ANSWERS_IN_QUEUE
        )

    def _climb(self, own: int, load: EngineLoad, others: int) -> None:
        """Before the capacity is known: an eighth more per scrape (every 25 ms then) while
        lowtide uses the whole limit, nothing waits, and the engine has most of lowtide's
        requests (not when they are stuck on the way, in a stalled engine or process). At the
        first sign of a full engine (requests waiting at two scrapes in a row while it runs as
        many as it ever has and lowtide's requests end), back to what it runs less the reserve
        at once, and from there one more per quiet scrape: the queue that tells the capacity
        is then short."""
        queue = self._queue
        full = self._full(self.QUEUED_SCRAPES) and queue is not None and queue.top >= self._most_run
        if full and not self._near:
            self._near = True
            self.value = min(self.value, load.running - self.reserve - others)
            return
        arrived = load.running + load.waiting >= own - max(2, own // 4)
        if own >= self.limit() - 1 and load.waiting == 0 and arrived:
            growth = 1.0 if self._near else max(1.0, self.value * (self.GROWTH - 1))
            self.value += growth

    def _learn(self, running: int) -> None:
        if self.capacity is None:
            if self._full(self.LEARN_SCRAPES) and self._queue is not None:
                top = self._queue.top
                if top >= self._most_run:
                    self.capacity = top
                    self._calm_since = self.clock()  # no probe before the queue is gone a while
            self._most_run = max(self._most_run, running)
            return
        if running > self.capacity:
            self.capacity = running
        elif (
            self._full(self.LOWER_SCRAPES)
            and max(self._running) < self.capacity
            and max(self._running) - min(self._running) <= max(1, self.capacity // 8)
        ):
            # A queue that stays while steadily fewer run than the capacity: the engine holds
            # fewer now (its KV cache is full with longer sequences), one less at a time. (A
            # running count that jumps about while requests wait is a machine too busy to
            # step the engine on time, not a smaller engine.)
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
