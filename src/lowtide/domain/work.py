"""The units of work the engine moves between the store and the backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class RequestState(IntEnum):
    PENDING = 0  #: waiting to be claimed (maybe not before ``not_before``)
    LEASED = 1  #: claimed by a worker until its lease runs out
    SUCCEEDED = 2  #: answered with a 2xx: a line of the output file
    FAILED = 3  #: a line of the error file


@dataclass(frozen=True, slots=True)
class ActiveBatch:
    """What the dispatcher needs to know of a batch it may claim requests from."""

    id: str
    account: str
    model: str
    endpoint: str
    input_blob_key: str
    expires_at: int
    # What the serving order reads (``lowtide.domain.priority``). Left out of equality and
    # hashing: they change from one look at the batches to the next, and the dispatcher keys
    # its per-batch queues by the batch.
    priority: int = field(default=0, compare=False)
    #: Lines without a result yet.
    remaining: int = field(default=0, compare=False)
    #: Lines ended per second lately (``lowtide.domain.pace``); None: not known yet.
    pace: float | None = field(default=None, compare=False)
    #: It has a cap (``max_cost``, ``max_error_rate``): a group commit may stop it.
    capped: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Claim:
    """One request leased to a worker. ``epoch`` is the fencing token of this lease."""

    batch_id: str
    line: int
    custom_id: str
    offset: int
    length: int
    attempts: int
    epoch: int
    #: The shared prompt prefix it is sent with (``lowtide.domain.prefix``); 0 for none.
    prefix_group: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a claimed request; committed in groups, fenced by ``epoch``.

    ``kind`` is ``succeeded`` (2xx), ``failed`` (goes to the error file) or ``retry``
    (back to pending, not before ``not_before``).
    """

    batch_id: str
    line: int
    epoch: int
    kind: str
    status_code: int | None = None
    request_id: str | None = None
    body: bytes | None = None  # compact JSON of the backend's answer
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    not_before: float = 0.0
    attempts: int = 0
    #: The request body as sent, when ``engine.record_sent_body`` asks for it in the line.
    sent_body: bytes | None = None
    #: Rendered into the result line when the outcome is recorded (``lines.outcome_line``).
    custom_id: str = field(kw_only=True)


SUCCEEDED = "succeeded"
FAILED = "failed"
RETRY = "retry"


#: A request as finalisation reads it back, in line order: ``(line, state, custom_id, result)``
#: where ``result`` is the line stored when its outcome was recorded, and ``custom_id`` is
#: given only where there is no such line (the request never ran: its line is rendered then).
#: A plain tuple, as the database driver returns it: 50,000 objects built per finalisation
#: cost more than writing the file.
ResultRow = tuple[int, int, str | None, bytes | None]
