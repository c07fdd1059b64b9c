"""The objects the HTTP API answers with, each declared once as a pydantic model.

The OpenAPI document (``lowtide.api.openapi``) is generated from these models, and every answer
is rendered from their fields by a ``renderer``: a field declared here is both documented and
sent, and nothing else is sent. A field is read from the record by its own name unless its
renderer names a getter for it, and a field typed with a one-value ``Literal`` is that value;
so a new batch field that the ``BatchRecord`` carries under the same name (the store fills it)
is one line here.

Rendering builds plain dicts field by field instead of validating model instances: a page of
100 batches costs what the hand-written dicts did, and the dicts go to orjson as before (the
idempotency store and the finish callback keep them as JSON too). The rules the models encode
are in docs/api-compatibility.md, "Batch object", "File object", "Listing" and "Errors".
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Generic,
    Literal,
    NamedTuple,
    TypeVar,
    get_args,
    get_origin,
)

from pydantic import BaseModel, Field

from lowtide.domain.ids import ID_PATTERN
from lowtide.domain.status import Status

if TYPE_CHECKING:  # records render themselves through this module (``to_api``)
    from lowtide.domain.backends import BackendView
    from lowtide.domain.records import BatchRecord, FileRecord

JsonDict = dict[str, Any]
Getter = Callable[[Any], Any]

Timestamp = Annotated[int, Field(description="Unix seconds.")]
Count = Annotated[int, Field(ge=0)]
ObjectId = Annotated[str, Field(pattern=ID_PATTERN)]


def renderer(model: type[BaseModel], **getters: Getter) -> Callable[[Any], JsonDict]:
    """A function that renders a source object as the JSON of ``model``: one key per declared
    field, in order. ``getters`` say how to read a field that is not the source's attribute of
    that name; a field typed with a one-value ``Literal`` is that value."""
    unknown = getters.keys() - model.model_fields.keys()
    if unknown:
        raise TypeError(f"{model.__name__} declares no field {sorted(unknown)}")
    return _compile(model, getters)


def _compile(model: type[BaseModel], getters: dict[str, Getter]) -> Callable[[Any], JsonDict]:
    """One dict display, as it would be written by hand (``{"id": s.id, ...}``): a loop over
    the fields with a call per field took half as long again for a page of 100 batches."""
    namespace: dict[str, Any] = {}
    items = []
    for i, (name, info) in enumerate(model.model_fields.items()):
        if not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(f"{model.__name__}.{name} cannot be rendered")
        if name in getters:
            namespace[f"_get{i}"] = getters[name]
            items.append(f"{name!r}: _get{i}(s)")
        elif get_origin(info.annotation) is Literal and len(get_args(info.annotation)) == 1:
            namespace[f"_const{i}"] = get_args(info.annotation)[0]
            items.append(f"{name!r}: _const{i}")
        else:
            items.append(f"{name!r}: s.{name}")
    source = f"def render(s):\n    return {{{', '.join(items)}}}\n"
    exec(compile(source, f"<{model.__name__} renderer>", "exec"), namespace)
    render: Callable[[Any], JsonDict] = namespace["render"]
    return render


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None
    code: str | None


class Error(BaseModel):
    """The OpenAI error envelope, used by every error answer."""

    error: ErrorDetail


class _ErrorSource(NamedTuple):
    message: str
    type: str
    param: str | None
    code: str | None


_ERROR = renderer(Error, error=renderer(ErrorDetail))


def error_json(message: str, type_: str, param: str | None, code: str | None) -> JsonDict:
    return _ERROR(_ErrorSource(message, type_, param, code))


# --------------------------------------------------------------------------- files


class File(BaseModel):
    """A file object, as the OpenAI Files API has it."""

    id: ObjectId
    object: Literal["file"]
    bytes: Count
    created_at: Timestamp
    filename: str
    purpose: str = Field(description="An upload purpose, or `batch_output` for result files.")
    status: Literal["uploaded", "processed", "error"]
    expires_at: Timestamp | None
    status_details: str | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: Literal[True]


file_json: Callable[[FileRecord], JsonDict] = renderer(File, status_details=lambda _: None)
file_deleted_json: Callable[[FileRecord], JsonDict] = renderer(FileDeleted)


# --------------------------------------------------------------------------- batches


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None
    line: Annotated[int, Field(ge=1)] | None


class BatchErrors(BaseModel):
    object: Literal["list"]
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: Count
    completed: Count
    failed: Count


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Cost(BaseModel):
    """The cost so far at the batch price (a lowtide extension)."""

    amount: float
    currency: str


class OffloadedLines(BaseModel):
    """The lines of a batch that ran on hosted Batch APIs (a lowtide extension, docs/offload.md;
    null while none did). Those that ran on lowtide's own backends are the rest of
    `request_counts.completed + failed`."""

    lines: Count = Field(description="Lines with a result from an upstream batch.")
    running: Count = Field(description="Lines in upstream batches now.")
    by_backend: dict[str, int] = Field(description="`lines`, per batch backend.")
    running_by_backend: dict[str, int] = Field(description="`running`, per batch backend.")


class WaitingFor(BaseModel):
    """The backend a batch is waiting for: every backend that serves its model is down (a
    lowtide extension; null while the batch can run)."""

    backend: str
    error: str | None = Field(description="Why the backend does not answer.")
    since: Timestamp = Field(description="When it stopped answering.")


class Batch(BaseModel):
    """A batch object: every key of the OpenAI Batch model, always present (null when not set),
    then the extensions `model`, `usage`, `cost`, `waiting_for` and the batch controls
    (docs/extensions.md)."""

    id: ObjectId
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None
    error_file_id: str | None
    created_at: Timestamp
    in_progress_at: Timestamp | None
    expires_at: Timestamp
    finalizing_at: Timestamp | None
    completed_at: Timestamp | None
    failed_at: Timestamp | None
    expired_at: Timestamp | None
    cancelling_at: Timestamp | None
    cancelled_at: Timestamp | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: Usage
    cost: Cost
    offloaded: OffloadedLines | None
    waiting_for: WaitingFor | None
    priority: int = Field(description="Served before batches of lower priority (0 by default).")
    max_cost: float | None = Field(
        description="The batch stops once its cost reaches this (in `cost.currency`)."
    )
    max_error_rate: float | None = Field(
        ge=0, le=1, description="The batch stops once more than this share of its lines fail."
    )
    paused_at: Timestamp | None = Field(description="Since when it is paused; null if it is not.")
    stop_reason: str | None = Field(
        description="Why the batch stopped (set from `cancelling` on): `max_cost`, "
        "`max_error_rate` or `cancelled_by_user`; null while it was not stopped.",
        examples=["max_cost"],
    )
    lines_per_minute: float | None = Field(
        ge=0, description="Lines ended per minute over the last minute or two, while it runs."
    )
    estimated_completion_at: Timestamp | None = Field(
        description="When it should end at that pace; null until that can be told."
    )


usage_json: Callable[[Any], JsonDict] = renderer(
    Usage,
    input_tokens_details=renderer(InputTokensDetails),
    output_tokens_details=renderer(OutputTokensDetails),
    total_tokens=lambda u: u.input_tokens + u.output_tokens,
)
# Error items are stored as rendered (``lowtide.domain.validation``): they pass as they are.
_ERRORS = renderer(BatchErrors, data=attrgetter("errors"))
_COST = renderer(Cost, amount=lambda b: _cost(b), currency=lambda b: b.pricing.currency)
_OFFLOADED = renderer(
    OffloadedLines,
    by_backend=lambda o: o.by_backend(),
    running_by_backend=lambda o: o.running_by_backend(),
)


def _cost(b: BatchRecord) -> float:
    """At the batch price; offloaded lines at their backend's ``price_factor`` times it."""
    amount = b.pricing.cost(b.usage)
    if b.offloaded is not None:
        amount = round(amount + b.offloaded.extra_cost(b.pricing), 10)
    return amount


_WAITING = renderer(WaitingFor, backend=attrgetter("name"), since=lambda v: int(v.since or 0))

batch_json: Callable[[BatchRecord], JsonDict] = renderer(
    Batch,
    errors=lambda b: _ERRORS(b) if b.errors else None,
    status=lambda b: b.status.value,
    request_counts=renderer(RequestCounts),
    usage=lambda b: usage_json(b.usage),
    cost=_COST,
    offloaded=lambda b: _OFFLOADED(b.offloaded) if b.offloaded is not None else None,
    waiting_for=lambda b: _WAITING(b.waiting_for) if b.waiting_for is not None else None,
    # A pause holds only while the batch is in progress (it may expire or be cancelled paused).
    paused_at=lambda b: b.paused_at if b.status is Status.IN_PROGRESS else None,
)

# --------------------------------------------------------------------------- estimates


class CostRange(BaseModel):
    """What a batch would cost at the batch price: input tokens alone, and with every line's
    output-token ceiling (null when some line has none)."""

    min: float
    max: float | None
    currency: str


class BatchEstimate(BaseModel):
    """What a batch of the file would take, before it runs (a lowtide extension:
    `POST /v1/batches/estimate`, docs/extensions.md)."""

    object: Literal["batch.estimate"]
    input_file_id: str
    endpoint: str
    model: str | None
    errors: BatchErrors | None = Field(
        description="What a batch of this file would fail validation with; null if valid."
    )
    lines: Count
    input_tokens: Count | None
    input_tokens_method: Literal["tokenize", "tokenize_sample", "characters", "test_model"] | None
    tokenized_lines: Count = Field(description="Lines a backend's tokenizer counted.")
    output_tokens_max: Count | None = Field(
        description="The sum of the lines' output-token ceilings; null if some line has none."
    )
    lines_without_max_tokens: Count
    cost: CostRange | None
    lines_per_minute: float | None = Field(
        ge=0, description="The recent pace of the model's backends, all batches together."
    )
    expected_seconds: float | None = Field(ge=0, description="Lines at that pace.")
    note: str | None = Field(description="Why a figure is missing, or how it was reached.")


_COST_RANGE = renderer(
    CostRange,
    min=attrgetter("cost_min"),
    max=attrgetter("cost_max"),
    currency=attrgetter("currency"),
)
estimate_json: Callable[[Any], JsonDict] = renderer(
    BatchEstimate,
    errors=lambda e: _ERRORS(e) if e.errors else None,
    cost=lambda e: _COST_RANGE(e) if e.cost_min is not None else None,
)

# --------------------------------------------------------------------------- lists

Item = TypeVar("Item", bound=BaseModel)


class ListPage(BaseModel, Generic[Item]):
    object: Literal["list"]
    data: list[Item]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileList(ListPage[File]):
    """One page of files."""


class BatchList(ListPage[Batch]):
    """One page of batches."""


class _Page(NamedTuple):
    data: Sequence[JsonDict]
    has_more: bool


_PAGE = renderer(
    ListPage,
    first_id=lambda p: p.data[0]["id"] if p.data else None,
    last_id=lambda p: p.data[-1]["id"] if p.data else None,
)


def page_json(data: Sequence[JsonDict], has_more: bool) -> JsonDict:
    """The list envelope around rendered items."""
    return _PAGE(_Page(data, has_more))


# --------------------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok"]


class BackendState(BaseModel):
    name: str
    state: Literal["up", "down", "unknown"] = Field(
        description="`unknown` when no engine has reported on it lately (no worker runs)."
    )


class Ready(BaseModel):
    """Ready when the database and the storage answer; backends that are down do not make the
    API unready (it works without them), they are only named."""

    status: Literal["ok", "unavailable"]
    database: str = Field(description="`ok`, or `error: ` and the kind of failure.")
    storage: str = Field(description="`ok`, or `error: ` and the kind of failure.")
    backends: list[BackendState]


class Backend(BaseModel):
    """A backend as the engines see it (a lowtide extension: ``GET /v1/backends``)."""

    name: str
    models: list[str]
    state: Literal["up", "down", "unknown"]
    since: Timestamp | None = Field(description="When it went into that state.")
    error: str | None = Field(description="Why it is, or was last, down.")
    concurrency_limit: Count = Field(
        description="Requests the engines may have in flight to it now, fleet-wide."
    )
    in_flight: Count


class BackendList(BaseModel):
    object: Literal["list"]
    data: list[Backend]


_HEALTH = renderer(Health)


def health_json() -> JsonDict:
    return _HEALTH(None)


class _ReadySource(NamedTuple):
    status: str
    database: str
    storage: str
    backends: list[JsonDict]


_READY = renderer(Ready)
_BACKEND_STATE = renderer(BackendState)
_BACKEND = renderer(
    Backend,
    models=lambda v: list(v.models),
    since=lambda v: None if v.since is None else int(v.since),
    concurrency_limit=attrgetter("limit"),
)


def ready_json(database: str, storage: str, backends: Sequence[BackendView]) -> JsonDict:
    ok = database == storage == "ok"
    states = [_BACKEND_STATE(view) for view in backends]
    return _READY(_ReadySource("ok" if ok else "unavailable", database, storage, states))


def backends_json(backends: Sequence[BackendView]) -> JsonDict:
    return {"object": "list", "data": [_BACKEND(view) for view in backends]}
