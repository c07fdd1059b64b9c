"""The batch lifecycle as one state machine.

```
validating ──ok──> in_progress ──all lines done──> finalizing ──files written──> completed
    │                  │  └──window elapsed──> finalizing ──> expired
    │                  └──cancel──> cancelling ──in-flight done──> cancelled
    ├──validation error──> failed
    ├──window elapsed──> finalizing ──> expired
    └──cancel──> cancelling ──> cancelled
```

``MOVES`` is the only source of truth for which status may follow which: the stores write the
allowed sources into every statement that moves a batch (``{from.<status>}`` in their SQL
files), and the database itself refuses any other move (a trigger that checks the
``batch_moves`` table, filled from ``MOVES`` whenever a store opens).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class Status(StrEnum):
    VALIDATING = "validating"  #: the input file is being checked
    FAILED = "failed"  #: validation failed; ``errors`` says why
    IN_PROGRESS = "in_progress"  #: requests are being dispatched
    FINALIZING = "finalizing"  #: result files are being written
    COMPLETED = "completed"  #: every line ran; result files are published
    EXPIRED = "expired"  #: the completion window passed first
    CANCELLING = "cancelling"  #: no new dispatches; waiting for in-flight requests
    CANCELLED = "cancelled"  #: cancelled; partial results are published


TERMINAL: frozenset[Status] = frozenset(
    {Status.FAILED, Status.COMPLETED, Status.EXPIRED, Status.CANCELLED}
)

#: The only moves the engine and the service may make: status -> the statuses it may become.
MOVES: Mapping[Status, frozenset[Status]] = MappingProxyType(
    {
        Status.VALIDATING: frozenset(
            {Status.IN_PROGRESS, Status.FAILED, Status.CANCELLING, Status.FINALIZING}
        ),
        Status.IN_PROGRESS: frozenset({Status.FINALIZING, Status.CANCELLING}),
        Status.CANCELLING: frozenset({Status.CANCELLED}),
        Status.FINALIZING: frozenset({Status.COMPLETED, Status.EXPIRED}),
        Status.FAILED: frozenset(),
        Status.COMPLETED: frozenset(),
        Status.EXPIRED: frozenset(),
        Status.CANCELLED: frozenset(),
    }
)


def sources(dst: Status) -> list[Status]:
    """The statuses a batch may move to ``dst`` from, in declaration order."""
    return [src for src in Status if dst in MOVES[src]]


def parse_statuses(text: str) -> list[Status]:
    """Parse a comma-separated status filter; raises ValueError on an unknown status."""
    return [Status(part.strip()) for part in text.split(",") if part.strip()]
