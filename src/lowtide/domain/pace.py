"""How fast a batch runs: lines ended per minute over the last minute or two, and when it
should end at that pace (docs/extensions.md, "Progress and ETA").

The group commit keeps two marks per batch, in the same UPDATE that adds the group to the
batch's counters (so no write per request): ``(pace_at, pace_done)``, when the current window
opened and how many lines had ended then, and ``(pace_prev_at, pace_prev_done)`` for the window
before it. A window opens at the first commit at least ``WINDOW`` seconds after the current
one opened; before the first, the batch's ``in_progress_at`` (with 0 lines) stands in for the
current mark. The rate is read from the older mark to now: it spans one to two windows while
lines keep ending, and falls towards 0 while none do (a stall shows as one, the longer the
more).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from lowtide.domain.records import BatchRecord
from lowtide.domain.status import Status

#: Seconds between two marks (the stores' SQL uses the same figure: ``{pace.window}``).
WINDOW: Final = 60.0
#: No rate is given over less than this: the first few seconds of a batch say little.
MIN_SPAN: Final = 10.0


def per_second(
    in_progress_at: float | None,
    done: int,
    pace_at: float,
    pace_done: int,
    prev_at: float,
    prev_done: int,
    now: float,
) -> float | None:
    """Lines ended per second from the older mark to ``now``; None over less than
    ``MIN_SPAN`` seconds, or before the batch started."""
    if prev_at > 0:
        since, before = prev_at, prev_done
    elif pace_at > 0:
        since, before = pace_at, pace_done
    elif in_progress_at:
        since, before = float(in_progress_at), 0
    else:
        return None
    span = now - since
    if span < MIN_SPAN:
        return None
    return max(0, done - before) / span


def batch_per_second(batch: BatchRecord, now: float) -> float | None:
    """The pace of a batch in progress (None otherwise)."""
    if batch.status != Status.IN_PROGRESS:
        return None
    return per_second(
        batch.in_progress_at,
        batch.completed + batch.failed,
        batch.pace_at,
        batch.pace_done,
        batch.pace_prev_at,
        batch.pace_prev_done,
        now,
    )


def mark(batches: Iterable[BatchRecord], now: float) -> None:
    """Set ``lines_per_minute`` and ``estimated_completion_at`` of batches in progress and
    not paused (both stay None otherwise, or until ``MIN_SPAN`` seconds of pace are known;
    the estimate also needs at least one line ended since the older mark)."""
    for batch in batches:
        if batch.paused_at is not None:
            continue
        rate = batch_per_second(batch, now)
        if rate is None:
            continue
        batch.lines_per_minute = round(rate * 60, 3)
        left = batch.total - batch.completed - batch.failed
        if rate > 0:
            batch.estimated_completion_at = int(now + max(0, left) / rate + 0.5)


class PaceRow(NamedTuple):
    """A batch's pace marks as the store reads them for its model's pace."""

    status: str
    in_progress_at: int | None
    done: int
    pace_at: float
    pace_done: int
    prev_at: float
    prev_done: int
    counted_at: int | None


def model_per_second(rows: Sequence[PaceRow], now: float) -> float | None:
    """The recent pace of a model's backends, in lines per second: the sum of the paces of
    its batches in progress; if none has one, the pace of the batch that ended last, up to
    its last commit. None when no batch of it has run long enough to tell."""
    running = [
        rate
        for r in rows
        if r.status == Status.IN_PROGRESS
        and (rate := per_second(r.in_progress_at, r.done, *r[3:7], now)) is not None
    ]
    if running:
        return sum(running)
    ended = sorted(
        (r for r in rows if r.status != Status.IN_PROGRESS and r.counted_at),
        key=lambda r: r.counted_at or 0,
    )
    for r in reversed(ended):
        rate = per_second(r.in_progress_at, r.done, *r[3:7], float(r.counted_at or 0))
        if rate is not None:
            return rate
    return None
