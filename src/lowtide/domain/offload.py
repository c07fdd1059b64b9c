"""Offload to a hosted Batch API (docs/offload.md): the upstreams' published limits, the states
of a chunk, and what a batch shows of the lines that ran upstream. Pure: no I/O.

A *chunk* is a group of one batch's requests sent to one batch backend as one upstream input
file and one upstream batch. Its states, in order (each recorded before the step that leaves
it, so that a crash at any point leaves a state that says what may have happened upstream)::

    claimed ──upload──> uploaded ──record "creating"──> creating ──create──> running
       │                   │                               │                   │ poll
       └───────────────────┴────── give the lines back ────┘                   v
                                        │                                  collecting
                                        v                                      │ record each
                                     cleaning <────────────────────────────────┘ line's outcome
                                        │ delete the upstream files
                                        v
                                      done

- ``claimed``: its requests are held by it; nothing is known upstream, except that an upload
  whose answer was lost may have left an input file there (found by its name).
- ``uploaded``: the input file is upstream (``file_id``).
- ``creating``: a create of the upstream batch may have been sent (``creates`` counts them):
  before another, the upstream's batches are listed to find one that carries the chunk's id.
- ``running``: the upstream batch exists (``upstream_id``) and is polled.
- ``collecting``: it ended upstream; its output and error files are read and each line's outcome
  recorded (fenced by the request's lease epoch, so recording twice changes nothing).
- ``cleaning``: no request is held any more; the upstream files are deleted (if configured).
- ``done``: nothing is left to do; the row stays, as the record of what ran where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, Protocol

# --------------------------------------------------------------------------- upstream limits

Preset = Literal["openai", "dashscope"]


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """What one upstream input file and batch may hold, and the windows it accepts."""

    max_lines: int
    max_file_bytes: int
    max_line_bytes: int
    min_window_hours: int
    max_window_hours: int


#: The hosted APIs' published limits. OpenAI: 50,000 requests and 200 MB per input file (no
#: limit of its own per line), a window of 24h only. Model Studio: 50,000 lines, 500 MB per
#: file, 6 MB per line, windows of 24h to 336h. Decimal megabytes: the smaller reading.
PRESETS: Final[dict[str, UpstreamLimits]] = {
    "openai": UpstreamLimits(50_000, 200_000_000, 200_000_000, 24, 24),
    "dashscope": UpstreamLimits(50_000, 500_000_000, 6_000_000, 24, 336),
}

#: Bytes a line may grow by on its way upstream (its ``custom_id`` becomes the line number,
#: the model its alias, and the backend's defaults and overrides are set): a chunk is filled
#: with each line's stored length plus this, so that the file built from it stays in bounds.
LINE_SLACK: Final = 1024

_WINDOW = re.compile(r"^([1-9][0-9]*)(h|d)$")


def window_hours(window: str) -> int:
    """``"24h"`` -> 24, ``"2d"`` -> 48; ValueError for anything else."""
    match = _WINDOW.fullmatch(window)
    if match is None:
        raise ValueError(f"{window!r} is not a window such as '24h' or '2d'")
    return int(match[1]) * (24 if match[2] == "d" else 1)


# --------------------------------------------------------------------------- chunks

#: Input, cached input, output and reasoning tokens.
Tokens = tuple[int, int, int, int]

CLAIMED: Final = "claimed"
UPLOADED: Final = "uploaded"
CREATING: Final = "creating"
RUNNING: Final = "running"
COLLECTING: Final = "collecting"
CLEANING: Final = "cleaning"
DONE: Final = "done"
STATES: Final = (CLAIMED, UPLOADED, CREATING, RUNNING, COLLECTING, CLEANING, DONE)

#: The upstream statuses after which an upstream batch changes no more.
UPSTREAM_ENDED: Final = frozenset({"completed", "failed", "expired", "cancelled"})

#: The lease owner of a request held by a chunk: ``offload:<chunk id>``. Such a request stays
#: leased (to the chunk, not to a worker) until the chunk gives it its outcome, so that no
#: dispatcher claims it meanwhile, and a cancelled or expiring batch waits for it.
HOLDER_PREFIX: Final = "offload:"
#: The lease of a request held by a chunk never runs out by itself: the chunk's own lease (in
#: ``offload_chunks``) is what a worker renews, and what another worker takes over.
HELD_UNTIL: Final = 1e15


def holder(chunk_id: str) -> str:
    return HOLDER_PREFIX + chunk_id


@dataclass(slots=True)
class Chunk:
    """One row of ``offload_chunks``: the chunk, its upstream objects and its lease."""

    id: str
    batch_id: str
    backend: str
    state: str
    lines: int
    price_factor: float
    window: str
    created_at: float
    bytes: int = 0
    file_id: str | None = None
    upstream_id: str | None = None
    upstream_status: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: Creates of the upstream batch sent so far (each recorded before it is sent).
    creates: int = 0
    #: The upstream batch was asked to cancel (the lowtide batch stopped or expires).
    cancel_sent: bool = False
    #: Lines whose outcome it recorded so far (final counts once it is cleaning).
    recorded: int = 0
    completed: int = 0
    failed: int = 0
    #: The tokens of its answered lines (final once it is cleaning).
    tokens: Tokens = (0, 0, 0, 0)
    #: The last trouble with the upstream, for operators (``lowtide`` logs it too).
    error: str | None = None
    lease_owner: str | None = None
    lease_epoch: int = 0
    lease_until: float = 0.0
    updated_at: float = 0.0

    @property
    def open(self) -> bool:
        """Its requests may still be held by it."""
        return self.state not in (CLEANING, DONE)


@dataclass(frozen=True, slots=True)
class ChunkLine:
    """A request held by a chunk: what the upload needs, and the lease epoch that fences the
    outcome the chunk records for it."""

    line: int
    custom_id: str
    offset: int
    length: int
    attempts: int
    epoch: int


# --------------------------------------------------------------------------- the batch object


class Prices(Protocol):
    """What a batch's ``Pricing`` gives (``lowtide.domain.records``)."""

    input_price: float
    output_price: float
    discount: float


@dataclass(frozen=True, slots=True)
class BackendShare:
    """What one batch backend did for a batch at one price factor: lines with a result from
    it, lines it holds now, and the tokens of its answered lines."""

    backend: str
    completed: int = 0
    failed: int = 0
    running: int = 0
    tokens: Tokens = (0, 0, 0, 0)
    price_factor: float = 1.0

    def cost_beyond_batch_price(self, pricing: Prices) -> float:
        """What its lines cost beyond the batch price that the batch's usage is billed at:
        they cost ``price_factor`` times that price (0 at the default factor of 1)."""
        input_tokens, _, output_tokens, _ = self.tokens
        real_time = input_tokens * pricing.input_price + output_tokens * pricing.output_price
        return (self.price_factor - 1.0) * real_time * pricing.discount / 1_000_000


@dataclass(frozen=True, slots=True)
class Offloaded:
    """The lines of a batch that ran upstream, by batch backend (``offloaded`` on the batch)."""

    backends: tuple[BackendShare, ...]

    @property
    def lines(self) -> int:
        """Lines with a result from an upstream."""
        return sum(b.completed + b.failed for b in self.backends)

    @property
    def running(self) -> int:
        """Lines held by upstream batches now."""
        return sum(b.running for b in self.backends)

    def by_backend(self) -> dict[str, int]:
        """Lines with a result, per batch backend."""
        found: dict[str, int] = {}
        for share in self.backends:
            found[share.backend] = found.get(share.backend, 0) + share.completed + share.failed
        return found

    def running_by_backend(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for share in self.backends:
            found[share.backend] = found.get(share.backend, 0) + share.running
        return found

    def extra_cost(self, pricing: Prices) -> float:
        return sum(share.cost_beyond_batch_price(pricing) for share in self.backends)
