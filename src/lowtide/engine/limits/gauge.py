"""The limit from the engine's own metrics: its capacity, less ``reserve``, less what others
run and queue (``EngineLoadLimit``; the package docstring says why)."""

from __future__ import annotations

from collections import deque
from typing import Final

from lowtide.engine.limits.base import INITIAL, Clock, EngineLoad, clamp


class EngineLoadLimit:
    """The limit from the engine's running and waiting counts (see the package docstring).

    ``capacity`` is learned. First, when requests stayed waiting at ``LEARN_SCRAPES`` scrapes in
    a row while the engine ran as many as it ever has, as the most seen running then (a request
    that merely arrived between two steps waits for one step, not for a run of scrapes; nor does
    a queue while the engine runs fewer than before say how many it can run). From there it
    rises to any larger number seen running, and comes down by one whenever a queue stays over
    ``LOWER_SCRAPES`` scrapes while fewer than it run (the KV cache holds fewer now). Until it
    is known the limit climbs (``_climb``). After a while with neither a queue nor anyone
    else's requests (``_probe``), one scrape interval is allowed an eighth more than the
    capacity, reserve included, to see whether the engine runs more (the capacity may have been
    learned short, or the engine may hold more now).
    """

    LEARN_SCRAPES: Final = 8
    LOWER_SCRAPES: Final = 5
    #: Requests waiting at this many scrapes in a row is a queue, for the probes.
    QUEUED_SCRAPES: Final = 2
    GROWTH: Final = 1.25
    PROBE_MIN: Final = 2.0
    PROBE_MAX: Final = 60.0

    def __init__(self, ceiling: int, reserve: int, clock: Clock, initial: int = INITIAL) -> None:
        self.ceiling, self.reserve, self.clock = ceiling, reserve, clock
        self.capacity: int | None = None
        self.value = clamp(initial, ceiling)
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
        self.value = clamp(self.value, self.ceiling)

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
        if queued or self.foreign > 0:
            # Never while others use the engine: the reserve is theirs (and their load, which
            # comes and goes, shows the engine's capacity by itself).
            self._calm_since = now
            return False
        if now - self._calm_since >= self._probe_every and own >= self.limit() - 1:
            self._probing = True
            self._probe_base = self.capacity or 0
        return self._probing
