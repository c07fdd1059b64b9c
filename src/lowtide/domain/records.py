"""The records that the store keeps; ``to_api`` renders them as ``lowtide.domain.wire`` declares."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lowtide.domain import wire
from lowtide.domain.backends import BackendView
from lowtide.domain.offload import Offloaded
from lowtide.domain.status import Status

JsonDict = dict[str, Any]


@dataclass(slots=True)
class FileRecord:
    id: str
    account: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    blob_key: str
    expires_at: int | None = None
    status: str = "processed"

    def to_api(self) -> JsonDict:
        return wire.file_json(self)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def to_api(self) -> JsonDict:
        return wire.usage_json(self)


@dataclass(slots=True)
class Pricing:
    """Prices snapshotted when the batch is created, so later config changes never rebill it."""

    input_price: float = 0.0  # per 1M tokens, real-time
    output_price: float = 0.0
    discount: float = 0.5
    currency: str = "USD"

    def cost(self, usage: Usage) -> float:
        # Reasoning tokens are part of output tokens and billed at the output price; cached
        # input tokens get no further discount (docs/api-compatibility.md, "Billing").
        real_time = usage.input_tokens * self.input_price + usage.output_tokens * self.output_price
        return round(real_time * self.discount / 1_000_000, 10)


@dataclass(slots=True)
class BatchRecord:
    id: str
    account: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: Status = Status.VALIDATING
    metadata: dict[str, str] | None = None
    model: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[JsonDict] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    pricing: Pricing = field(default_factory=Pricing)
    output_expires_after: int | None = None
    #: The status finalisation will end in (completed, expired or cancelled).
    end_status: Status | None = None
    #: Not stored: the lines that ran on hosted Batch APIs, set by the service when it
    #: answers (``lowtide.domain.offload``); None when none did.
    offloaded: Offloaded | None = None
    #: Not stored: the backend the batch waits for (every backend of its model is down), set
    #: by the service from the engines' reports when it answers.
    waiting_for: BackendView | None = None
    #: The batch controls (``lowtide.domain.controls``): served before lower priorities; the
    #: caps that stop it; why it stopped; since when it is paused (None: it is not).
    priority: int = 0
    max_cost: float | None = None
    max_error_rate: float | None = None
    stop_reason: str | None = None
    paused_at: int | None = None
    #: The pace marks the group commit keeps (``lowtide.domain.pace``).
    pace_at: float = 0.0
    pace_done: int = 0
    pace_prev_at: float = 0.0
    pace_prev_done: int = 0
    #: Not stored: the pace and the estimated end, set by the service when it answers.
    lines_per_minute: float | None = None
    estimated_completion_at: int | None = None

    def to_api(self) -> JsonDict:
        return wire.batch_json(self)

    def replace(self, **changes: Any) -> BatchRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class BatchFilter:
    """The list filters (docs/api-compatibility.md, "Listing"), already parsed."""

    statuses: tuple[Status, ...] = ()
    name_contains: str | None = None
    input_file_ids: tuple[str, ...] = ()
    created_after: int | None = None
    created_before: int | None = None
    #: Batches created before this are past retention and never shown.
    not_before: int | None = None
