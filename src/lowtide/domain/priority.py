"""The order in which the engine serves the batches in progress (docs/extensions.md,
"Priority"): the dispatcher claims for them, and hands a freed slot to, the first of this
order that has work for it.

1. *Urgent* batches first, earliest deadline (``expires_at``) first. A batch is urgent when the
   time left before its deadline is at most ``URGENT_FACTOR`` times what its model's backends
   need, at their recent pace, to run its lines left and those of every other batch of the
   same model due no later than it (while the model's batches end no lines, that time is
   endless: every batch is urgent, which is plain earliest-deadline-first); or at most
   ``URGENT_FLOOR`` seconds, whatever the pace. Until the model's pace is known (no batch of
   it has run ``pace.MIN_SPAN`` seconds yet), only that floor makes a batch urgent.
2. Then the others: higher ``priority`` first, then earliest deadline.

Why this keeps deadlines: priority reorders only batches that are not urgent, and a batch
turns urgent while the work due no later than it still fits in half its time left (at the
recent pace). From then on, only that work goes before it. So a batch that could have met its
deadline under earliest-deadline-first still meets it, as long as the backends keep at least
half their recent pace; and no batch waits for lack of turns while another one could wait.
Batches of different models do not compete (different slots), so each model is judged alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

#: The time left must exceed this many times the time needed, else the batch is urgent.
URGENT_FACTOR: Final = 2.0
#: Seconds before its deadline from which a batch is urgent whatever the pace says.
URGENT_FLOOR: Final = 600.0


class Candidate(Protocol):
    """What the order reads of a batch in progress (``lowtide.domain.work.ActiveBatch``)."""

    @property
    def model(self) -> str: ...

    @property
    def expires_at(self) -> int: ...

    @property
    def priority(self) -> int: ...

    @property
    def remaining(self) -> int: ...

    @property
    def pace(self) -> float | None: ...


C = TypeVar("C", bound=Candidate)


def serve_order(batches: Sequence[C], now: float) -> list[C]:
    """``batches`` (given earliest deadline first, ties in creation order) in serving order."""
    urgent = _urgent(batches, now)
    first = [b for b, hurry in zip(batches, urgent, strict=True) if hurry]
    rest = [b for b, hurry in zip(batches, urgent, strict=True) if not hurry]
    rest.sort(key=lambda b: -b.priority)  # stable: deadline order stays within a priority
    return first + rest


def _urgent(batches: Sequence[C], now: float) -> list[bool]:
    pace: dict[str, float] = defaultdict(float)  # only models with a known pace
    for b in batches:
        if b.pace is not None:
            pace[b.model] += b.pace
    backlog: dict[str, int] = defaultdict(int)
    found = []
    for b in batches:  # deadline order: each batch's backlog holds every one due before it
        backlog[b.model] += max(0, b.remaining)
        left = b.expires_at - now
        need = _need(backlog[b.model], pace.get(b.model))
        found.append(left <= URGENT_FLOOR or left <= URGENT_FACTOR * need)
    return found


def _need(backlog: int, rate: float | None) -> float:
    """Seconds to run ``backlog`` lines at ``rate`` a second: none while the pace is not known
    (the floor alone decides), endless while lines stop ending."""
    if rate is None:
        return 0.0
    return backlog / rate if rate > 0 else math.inf
