"""Use cases of the Batches API: create, retrieve, list, cancel (docs/api-compatibility.md,
"Create batch", "Listing", "Cancel")."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from lowtide import errors, metrics
from lowtide.domain import ids, pace
from lowtide.domain.accounts import BATCH_KIND
from lowtide.domain.records import BatchFilter, BatchRecord, JsonDict
from lowtide.domain.status import TERMINAL, Status, parse_statuses
from lowtide.domain.validation import ENDPOINTS, TEST_ENDPOINT
from lowtide.service import control_params
from lowtide.service.backends import BackendService
from lowtide.service.idempotency import Attempt, check_key
from lowtide.service.offload import mark_offloaded
from lowtide.settings import Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)

# What the create and list parameters accept. The OpenAPI document states these same values
# (``lowtide.api.params``); each pattern reads alike in Python and in ECMA-262 (JSON Schema).
#: ``completion_window``: whole hours from 24h to 336h, or days from 1d to 14d, no leading 0.
WINDOW_PATTERN = "^(?:(2[4-9]|[3-9][0-9]|[12][0-9]{2}|3[0-2][0-9]|33[0-6])h|([1-9]|1[0-4])d)$"
_WINDOW_RE = re.compile(WINDOW_PATTERN)
_LEAP_YEAR = "([1-9][0-9](0[48]|[2468][048]|[13579][26])|([2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])"  # any month, days 1 to 28
    "|(0[13-9]|1[0-2])(29|30)"  # every month but February
    "|(0[13578]|1[02])31"
)
#: ``create_after`` / ``create_before``: yyyyMMddHHmmss, a real date (no 30 February), or empty.
TIME_PATTERN = (
    f"^(([1-9][0-9]{{3}}({_MONTH_DAY})|{_LEAP_YEAR}0229)([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9])?$"
)
_TIME_RE = re.compile(TIME_PATTERN)
MAX_INPUT_FILE_IDS = 20
LIST_LIMIT = (1, 100, 20)  # least, most, default
OUTPUT_EXPIRY_SECONDS = (3600, 2_592_000)  # least, most
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
#: Shorter limits for the values of these keys.
METADATA_LIMITS = {"ds_name": 100, "ds_description": 200}
_TYPE_NAMES = {
    list: "an array",
    dict: "an object",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


@dataclass(frozen=True, slots=True)
class CreateParams:
    """The parameters of a batch create, checked; the batch controls (docs/extensions.md)
    come last."""

    endpoint: str
    completion_window: str
    window_seconds: int
    input_file_id: str
    metadata: dict[str, str] | None
    output_expires_after: int | None
    priority: int = 0
    max_cost: float | None = None
    max_error_rate: float | None = None

    def canonical(self) -> dict[str, Any]:
        """What an idempotency key is compared on (metadata as a mapping: order ignored). The
        controls count only when set, so that a key recorded without them compares the same."""
        found = {
            "endpoint": self.endpoint,
            "completion_window": self.completion_window,
            "input_file_id": self.input_file_id,
            "metadata": self.metadata,
            "output_expires_after": self.output_expires_after,
        }
        controls = {
            "priority": self.priority or None,
            "max_cost": self.max_cost,
            "max_error_rate": self.max_error_rate,
        }
        return found | {k: v for k, v in controls.items() if v is not None}


class BatchService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        wake: Callable[[], None],
        backends: BackendService | None = None,
    ) -> None:
        """``wake`` tells the engine that a batch was created or cancelled; ``backends`` says
        which batches wait for a backend that is down."""
        self.settings, self.store, self.wake = settings, store, wake
        self.backends = backends or BackendService(settings, store)
        self.retention_seconds = settings.retention.batch_days * 86400

    async def create(self, account: str, params: Any) -> BatchRecord:
        parsed = _parse_create(params)
        if parsed.endpoint == TEST_ENDPOINT:
            await self.check_test_quota(account)
        record = self.new_record(account, parsed)
        await self.store.create_batch(record)
        self.created(record)
        return record

    async def create_idempotent(
        self, account: str, params: Any, header_key: str | None
    ) -> JsonDict:
        """``POST /batches``: ``create``, once per idempotency key (the ``Idempotency-Key``
        header or the body's ``idempotency_key``); the answer is the batch object."""
        key = _idempotency_key(params, header_key)
        if key is None:
            return (await self.create(account, params)).to_api()
        parsed = _parse_create(params)
        attempt = Attempt.start(account, BATCH_KIND, key, parsed.canonical())
        held = await self.store.find_idempotency(account, BATCH_KIND, key, attempt.since)
        if held is not None:
            return attempt.replay(held)
        if parsed.endpoint == TEST_ENDPOINT:
            await self.check_test_quota(account)
        record = self.new_record(account, parsed)
        response = record.to_api()
        held = await self.store.create_batch(record, attempt.claim(response))
        if held is not None:
            return attempt.replay(held)  # a retry running at the same time got there first
        self.created(record)
        return response

    def new_record(self, account: str, parsed: CreateParams) -> BatchRecord:
        now = int(time.time())
        override = self.settings.testing.completion_window_seconds
        window = override if override is not None else parsed.window_seconds
        record = BatchRecord(
            id=ids.new_batch_id(),
            account=account,
            endpoint=parsed.endpoint,
            input_file_id=parsed.input_file_id,
            completion_window=parsed.completion_window,
            created_at=now,
            expires_at=now + int(window),
            metadata=parsed.metadata,
            output_expires_after=parsed.output_expires_after,
            priority=parsed.priority,
            max_cost=parsed.max_cost,
            max_error_rate=parsed.max_error_rate,
        )
        record.pricing.discount = self.settings.billing.batch_discount
        record.pricing.currency = self.settings.billing.currency
        return record

    def created(self, record: BatchRecord) -> None:
        metrics.BATCHES_CREATED.inc()
        logger.info(
            "batch %s created",
            record.id,
            extra={"action": "batch_status", "batch_id": record.id, "status": "validating"},
        )
        self.wake()

    async def check_test_quota(self, account: str) -> None:
        limit = self.settings.limits.test_batches_per_account
        if await self.store.count_live_batches(account, TEST_ENDPOINT) >= limit:
            raise errors.RateLimited(
                f"At most {limit} test-model batches may run at once; wait for one to finish.",
                retry_after=10,
                code="too_many_test_batches",
            )

    async def get(self, account: str | None, batch_id: str) -> BatchRecord:
        """A batch of ``account`` (of any account when None: operators)."""
        batch = (
            await self.store.get_batch(account, batch_id) if ids.is_well_formed(batch_id) else None
        )
        if batch is None or batch.created_at < time.time() - self.retention_seconds:
            raise errors.NotFound(f"Batch {batch_id} not found.", param="batch_id")
        await self.backends.mark_waiting([batch])
        await mark_offloaded(self.settings, self.store, [batch])
        pace.mark([batch], time.time())
        return batch

    async def list(
        self, account: str | None, query: Mapping[str, str]
    ) -> tuple[list[BatchRecord], bool]:
        """One page of batches, and whether there are more."""
        least, most, default = LIST_LIMIT
        limit = _int_in(query.get("limit"), "limit", default, least, most)
        flt = self._filter(query)
        found = await self.store.list_batches(
            account, flt, after=query.get("after"), limit=limit + 1
        )
        await self.backends.mark_waiting(found[:limit])
        await mark_offloaded(self.settings, self.store, found[:limit])
        pace.mark(found[:limit], time.time())
        return found[:limit], len(found) > limit

    def _filter(self, query: Mapping[str, str]) -> BatchFilter:
        try:
            statuses = tuple(parse_statuses(query.get("status", "")))
        except ValueError:
            raise errors.InvalidValue(
                f"Invalid value for 'status': '{query['status']}'. Supported values are: "
                + ", ".join(f"'{s.value}'" for s in Status)
                + ".",
                param="status",
            ) from None
        file_ids = tuple(p.strip() for p in query.get("input_file_ids", "").split(",") if p.strip())
        if len(file_ids) > MAX_INPUT_FILE_IDS:
            raise errors.InvalidValue(
                f"At most {MAX_INPUT_FILE_IDS} input_file_ids may be given.",
                param="input_file_ids",
            )
        tz = ZoneInfo(self.settings.server.timezone)
        return BatchFilter(
            statuses=statuses,
            name_contains=query.get("ds_name") or None,
            input_file_ids=file_ids,
            created_after=_timestamp(query.get("create_after"), "create_after", tz),
            created_before=_timestamp(query.get("create_before"), "create_before", tz),
            not_before=int(time.time()) - self.retention_seconds,
        )

    async def cancel(self, account: str, batch_id: str) -> BatchRecord:
        await self.get(account, batch_id)  # 404 for unknown, foreign or retired ids
        batch = await self.store.request_cancel(account, batch_id, int(time.time()))
        if batch is None:
            raise errors.NotFound(f"Batch {batch_id} not found.", param="batch_id")
        if batch.status in TERMINAL and batch.status != Status.CANCELLED:
            raise errors.Conflict(f"Cannot cancel a batch with status '{batch.status.value}'.")
        if batch.status == Status.FINALIZING:
            raise errors.Conflict("Cannot cancel a batch with status 'finalizing'.")
        logger.info(
            "batch %s %s",
            batch_id,
            batch.status.value,
            extra={"action": "batch_status", "batch_id": batch_id, "status": batch.status.value},
        )
        self.wake()
        return batch


def _parse_create(params: Any) -> CreateParams:
    if not isinstance(params, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    endpoint = parse_endpoint(params.get("endpoint"))
    window, seconds = parse_completion_window(params.get("completion_window"))
    return CreateParams(
        endpoint=endpoint,
        completion_window=window,
        window_seconds=seconds,
        input_file_id=_required_str(params, "input_file_id"),
        metadata=_metadata(params.get("metadata")),
        output_expires_after=_output_expires_after(params.get("output_expires_after")),
        **control_params.parse(params),
    )


def _idempotency_key(params: Any, header_key: str | None) -> str | None:
    """The header's key, else the body's ``idempotency_key`` (sent by some clients through
    ``extra_body``); both given and different is a client bug, answered with 400."""
    header = check_key(header_key)
    body = None
    if isinstance(params, dict):
        body = check_key(params.get("idempotency_key"), "idempotency_key")
    if header is not None and body is not None and header != body:
        raise errors.InvalidValue(
            "The Idempotency-Key header and the 'idempotency_key' parameter differ.",
            param="idempotency_key",
        )
    return header or body


def parse_endpoint(value: Any) -> str:
    if value is None:
        raise errors.InvalidRequest(
            "Missing required parameter: 'endpoint'.",
            param="endpoint",
            code="missing_required_parameter",
        )
    if value not in ENDPOINTS:
        supported = ", ".join(f"'{e}'" for e in ENDPOINTS[:-1]) + f" and '{ENDPOINTS[-1]}'"
        raise errors.InvalidValue(
            f"Invalid value: '{value}'. Supported values are: {supported}.", param="endpoint"
        )
    return str(value)


def parse_completion_window(value: Any) -> tuple[str, int]:
    """``(window, seconds)``; ``InvalidValue`` naming ``completion_window`` otherwise."""
    message = (
        f"Invalid value for 'completion_window': {value!r}. It must be a whole number "
        "of hours or days from 24h (1d) to 336h (14d), such as '24h' or '7d'."
    )
    if value is None:
        raise errors.InvalidRequest(
            "Missing required parameter: 'completion_window'.",
            param="completion_window",
            code="missing_required_parameter",
        )
    match = _WINDOW_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise errors.InvalidValue(message, param="completion_window")
    hours, days = match.groups()
    return str(value), int(hours) * 3600 if hours else int(days) * 86400


def _required_str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if value is None:
        raise errors.InvalidRequest(
            f"Missing required parameter: '{key}'.", param=key, code="missing_required_parameter"
        )
    if not isinstance(value, str):
        raise errors.InvalidType(
            f"Invalid type for '{key}': expected a string, but got {_type_name(value)} instead.",
            param=key,
        )
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise errors.InvalidType(
            f"Invalid type for 'metadata': expected an object, but got "
            f"{_type_name(value)} instead.",
            param="metadata",
        )
    if len(value) > METADATA_MAX_PAIRS:
        raise errors.InvalidValue(
            f"'metadata' may hold at most {METADATA_MAX_PAIRS} pairs.", param="metadata"
        )
    for key, item in value.items():
        _check_metadata_pair(key, item)
    return dict(value)


def _check_metadata_pair(key: str, item: Any) -> None:
    param = f"metadata.{key}"
    if not isinstance(item, str):
        raise errors.InvalidType(
            f"Invalid type for '{param}': expected a string, but got {_type_name(item)} instead.",
            param=param,
        )
    if len(key) > METADATA_MAX_KEY:
        raise errors.InvalidValue(
            f"Metadata keys may be at most {METADATA_MAX_KEY} characters long.", param=param
        )
    limit = METADATA_LIMITS.get(key, METADATA_MAX_VALUE)
    if len(item) > limit:
        raise errors.InvalidValue(
            f"Invalid value for '{param}': at most {limit} characters.", param=param
        )


def _output_expires_after(value: Any) -> int | None:
    if value is None:
        return None
    seconds = value.get("seconds") if isinstance(value, dict) else None
    anchor = value.get("anchor") if isinstance(value, dict) else None
    if isinstance(seconds, float) and seconds.is_integer():
        seconds = int(seconds)  # 3600.0 is the integer 3600 in JSON
    least, most = OUTPUT_EXPIRY_SECONDS
    if (
        anchor != "created_at"
        or not isinstance(seconds, int)
        or isinstance(seconds, bool)
        or not least <= seconds <= most
    ):
        raise errors.InvalidValue(
            f"'output_expires_after' must be {{'anchor': 'created_at', 'seconds': "
            f"{least}..{most}}}.",
            param="output_expires_after",
        )
    return seconds


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), "a " + type(value).__name__)


def _int_in(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise errors.InvalidValue(f"'{name}' must be an integer from {low} to {high}.", param=name)
    return value


def _timestamp(text: str | None, name: str, tz: ZoneInfo) -> int | None:
    if not text:
        return None
    try:
        if not _TIME_RE.fullmatch(text):  # strptime alone takes 13 digits too
            raise ValueError(text)
        moment = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError:
        raise errors.InvalidValue(
            f"'{name}' must be a time as yyyyMMddHHmmss.", param=name
        ) from None
    return int(moment.timestamp())
