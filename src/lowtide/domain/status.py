"""The batch lifecycle as one state machine.

```
validating ──ok──> in_progress ──all lines done──> finalizing ──files written──> completed
    │                  │  └──window elapsed──> finalizing ──> expired
    │                  └──cancel──> cancelling ──in-flight done──> cancelled
    ├──validation error──> failed
    ├──window elapsed──> expired
    └──cancel──> cancelling ──> cancelled
```
"""

from __future__ import annotations

from enum import StrEnum


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

# The only transitions the engine and the service may make.
_ALLOWED: dict[Status, frozenset[Status]] = {
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

# Which timestamp column a transition into a status sets.
TIMESTAMP_OF: dict[Status, str] = {
    Status.IN_PROGRESS: "in_progress_at",
    Status.FAILED: "failed_at",
    Status.FINALIZING: "finalizing_at",
    Status.COMPLETED: "completed_at",
    Status.EXPIRED: "expired_at",
    Status.CANCELLING: "cancelling_at",
    Status.CANCELLED: "cancelled_at",
}


def can_move(src: Status, dst: Status) -> bool:
    return dst in _ALLOWED[src]


def parse_statuses(text: str) -> list[Status]:
    """Parse a comma-separated status filter; raises ValueError on an unknown status."""
    return [Status(part.strip()) for part in text.split(",") if part.strip()]
