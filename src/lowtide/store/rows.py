"""Mapping between records and database rows, shared by the SQL stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from lowtide.domain import ids, lines, pace, priority
from lowtide.domain.records import BatchRecord, FileRecord, Pricing, Usage
from lowtide.domain.status import Status
from lowtide.domain.work import RETRY, SUCCEEDED, ActiveBatch, Outcome, RequestState, ResultRow

_BATCH_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


#: Columns of the batch controls read as they are (``lowtide.domain.controls``, ``.pace``).
_CONTROLS = (
    "priority",
    "max_cost",
    "max_error_rate",
    "stop_reason",
    "paused_at",
    "pace_at",
    "pace_done",
    "pace_prev_at",
    "pace_prev_done",
)


def input_blob_key(file_id: str) -> str:
    return f"inputs/{file_id}"


def file_params(r: FileRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.account,
        r.purpose,
        r.filename,
        r.bytes,
        r.created_at,
        r.expires_at,
        r.status,
        r.blob_key,
    )


def file_from_row(row: Mapping[str, Any]) -> FileRecord:
    return FileRecord(
        id=row["id"],
        account=row["account"],
        purpose=row["purpose"],
        filename=row["filename"],
        bytes=row["bytes"],
        created_at=row["created_at"],
        blob_key=row["blob_key"],
        expires_at=row["expires_at"],
        status=row["status"],
    )


#: The columns of an ``insert_batch`` statement, in the order of ``batch_params``.
BATCH_COLUMNS = (
    "id",
    "account",
    "endpoint",
    "input_file_id",
    "completion_window",
    "status",
    "end_status",
    "model",
    "metadata",
    "name_lower",
    "created_at",
    "expires_at",
    "output_file_id",
    "error_file_id",
    "errors",
    "total",
    "completed",
    "failed",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_price",
    "output_price",
    "discount",
    "currency",
    "output_expires_after",
    *_BATCH_TIMES,
    "priority",
    "max_cost",
    "max_error_rate",
)


def batch_params(r: BatchRecord) -> tuple[Any, ...]:
    """The parameters of ``insert_batch`` (``BATCH_COLUMNS``)."""
    metadata = orjson.dumps(r.metadata).decode() if r.metadata is not None else None
    name = (r.metadata or {}).get("ds_name")
    return (
        r.id,
        r.account,
        r.endpoint,
        r.input_file_id,
        r.completion_window,
        r.status.value,
        r.end_status.value if r.end_status else None,
        r.model,
        metadata,
        name.lower() if name else None,
        r.created_at,
        r.expires_at,
        r.output_file_id,
        r.error_file_id,
        orjson.dumps(r.errors).decode() if r.errors is not None else None,
        r.total,
        r.completed,
        r.failed,
        r.usage.input_tokens,
        r.usage.cached_tokens,
        r.usage.output_tokens,
        r.usage.reasoning_tokens,
        r.pricing.input_price,
        r.pricing.output_price,
        r.pricing.discount,
        r.pricing.currency,
        r.output_expires_after,
        *(getattr(r, name) for name in _BATCH_TIMES),
        r.priority,
        r.max_cost,
        r.max_error_rate,
    )


def batch_from_row(row: Mapping[str, Any]) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        account=row["account"],
        endpoint=row["endpoint"],
        input_file_id=row["input_file_id"],
        completion_window=row["completion_window"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        status=Status(row["status"]),
        end_status=Status(row["end_status"]) if row["end_status"] else None,
        metadata=_json_or_none(row["metadata"]),
        model=row["model"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        errors=_json_or_none(row["errors"]),
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        usage=Usage(
            row["input_tokens"], row["cached_tokens"], row["output_tokens"], row["reasoning_tokens"]
        ),
        pricing=Pricing(row["input_price"], row["output_price"], row["discount"], row["currency"]),
        output_expires_after=row["output_expires_after"],
        **{name: row[name] for name in _BATCH_TIMES},
        **{name: row[name] for name in _CONTROLS},
    )


def active_batches(found: Iterable[Sequence[Any]], now: float) -> list[ActiveBatch]:
    """The rows of the ``active`` statement as batches, in serving order
    (``lowtide.domain.priority``)."""
    batches = [
        ActiveBatch(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4] or input_blob_key(r[6]),
            r[5],
            priority=r[7],
            remaining=r[8] - r[9],
            pace=pace.per_second(r[10], r[9], r[11], r[12], r[13], r[14], now),
            capped=bool(r[15]),
        )
        for r in found
    ]
    return priority.serve_order(batches, now)


def _json_or_none(text: str | bytes | None) -> Any:
    return orjson.loads(text) if text is not None else None


@dataclass(slots=True)
class BatchDelta:
    """What one group commit adds to a batch's counters."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, o: Outcome) -> None:
        if o.kind == SUCCEEDED:
            # Only 2xx lines are billed.
            self.completed += 1
            self.input_tokens += o.input_tokens
            self.cached_tokens += o.cached_tokens
            self.output_tokens += o.output_tokens
            self.reasoning_tokens += o.reasoning_tokens
        elif o.kind != RETRY:
            self.failed += 1

    def params(self) -> tuple[int, ...]:
        return (
            self.completed,
            self.failed,
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
        )


class ChunkSize:
    """How many result rows to read next, so that a chunk holds about ``target`` bytes of
    lines whatever their size: 2,000 rows of 1 KB answers, far fewer of 100 KB ones (2,000 of
    those would hold 200 MB in memory while the finaliser writes them)."""

    def __init__(self, target: int = 4 << 20, most: int = 2000, least: int = 16) -> None:
        self.target, self.most, self.least = target, most, least
        self.rows = 128  # a first guess that stays small however large the lines are

    def after(self, chunk: Sequence[ResultRow]) -> int:
        size = sum(len(r[3]) for r in chunk if r[3] is not None) or 1
        fit = self.target * len(chunk) // size
        self.rows = max(self.least, min(self.most, fit))
        return self.rows


async def result_chunks(
    fetch: Callable[[int, int], Awaitable[list[ResultRow]]], after: int = 0
) -> AsyncIterator[list[ResultRow]]:
    """A batch's result rows after line ``after`` in line order, a chunk at a time:
    ``fetch(after_line, limit)`` reads the next rows of one store, sized by ``ChunkSize``."""
    last, size = after, ChunkSize()
    while chunk := await fetch(last, size.rows):
        yield chunk
        last = chunk[-1][0]
        size.after(chunk)


def legacy_result_line(r: Sequence[Any]) -> bytes:
    """The result line of a request recorded by schema 2, from its columns ``batch_id, line,
    custom_id, state, status_code, request_id, body, error_code, error_message``."""
    return lines.answered_line(
        r[0],
        r[1],
        r[2],
        succeeded=r[3] == RequestState.SUCCEEDED,
        status_code=r[4],
        request_id=r[5],
        body=r[6],
        error_code=r[7],
        error_message=r[8],
    )


def result_file_ids(files: Sequence[FileRecord]) -> tuple[str | None, str | None]:
    output = next((f.id for f in files if f.id.startswith(ids.OUTPUT_FILE_PREFIX)), None)
    error = next((f.id for f in files if f.id.startswith(ids.ERROR_FILE_PREFIX)), None)
    return output, error
