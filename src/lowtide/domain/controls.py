"""The batch controls that neither hosted product has: caps that stop a batch, pause, priority
(docs/extensions.md). Pure rules; the stores apply the same ones in SQL, and a unit test holds
the two to each other.

A batch is *stopped* like a cancel (``cancelling``, then ``cancelled``): nothing more is sent,
requests in flight finish, and the lines never sent go to the error file. ``stop_reason`` says
why: a cap (``max_cost``, ``max_error_rate``) or an ordinary cancel (``cancelled_by_user``).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from lowtide.domain import lines
from lowtide.domain.records import BatchRecord
from lowtide.domain.status import Status

MAX_COST: Final = "max_cost"
MAX_ERROR_RATE: Final = "max_error_rate"
CANCELLED_BY_USER: Final = "cancelled_by_user"
#: Every ``stop_reason`` a batch may carry.
STOP_REASONS: Final = (MAX_COST, MAX_ERROR_RATE, CANCELLED_BY_USER)

#: ``max_error_rate`` is judged once this many lines have ended: before, a few early failures
#: would stop a batch that goes on to do well. A batch of this many lines or fewer is never
#: stopped by it (a stop needs that many ended and at least one still to run).
ERROR_RATE_MIN_LINES: Final = 100

#: The code of the error line of a request never sent because a cap stopped its batch.
STOPPED_CODE: Final = "batch_stopped"
_STOPPED_MESSAGES: Final = {
    MAX_COST: "This request was not executed because the batch reached its max_cost.",
    MAX_ERROR_RATE: "This request was not executed because the batch's error rate went over "
    "its max_error_rate.",
}

#: ``priority``: a 32-bit integer, as the databases store it; 0 by default.
PRIORITY_RANGE: Final = (-(2**31), 2**31 - 1)


def cap_crossed(batch: BatchRecord) -> str | None:
    """The cap a batch in progress has crossed with the lines ended so far, if any: its cost
    reached ``max_cost``, or (once ``ERROR_RATE_MIN_LINES`` have ended) its failed lines are
    more than ``max_error_rate`` of those ended. A batch whose every line has ended is never
    stopped: it finishes as it is. (The stores test the same in SQL: ``stop_capped``.)"""
    if batch.status != Status.IN_PROGRESS:
        return None
    done = batch.completed + batch.failed
    if done >= batch.total:
        return None
    if batch.max_cost is not None and batch.pricing.cost(batch.usage) >= batch.max_cost:
        return MAX_COST
    rate = batch.max_error_rate
    if rate is not None and done >= ERROR_RATE_MIN_LINES and batch.failed > rate * done:
        return MAX_ERROR_RATE
    return None


def unrun_reason(end: Status, stop_reason: str | None) -> tuple[str, str] | None:
    """The (code, message) of the error line of a request that never ran because its batch
    ended ``end``; None when every request ran (completed)."""
    if end == Status.EXPIRED:
        return lines.EXPIRED_CODE, lines.EXPIRED_MESSAGE
    if end != Status.CANCELLED:
        return None
    message = _STOPPED_MESSAGES.get(stop_reason or "")
    if message is not None:
        return STOPPED_CODE, message
    return lines.CANCELLED_CODE, lines.CANCELLED_MESSAGE


class ResultMarks(NamedTuple):
    """Where a batch's results stand after a line (``Store.result_marks``): the first line
    with no result yet (None: every line has one), and the last line with a result of each
    kind (None: none)."""

    first_pending: int | None
    last_output: int | None
    last_error: int | None


class FailedRequest(NamedTuple):
    """A request that ended in error: its line, where that line lies in the input file, and
    the ``error.code`` of its error line."""

    line: int
    offset: int
    length: int
    code: str | None
