"""The retry of a finished batch's failed lines (docs/extensions.md, "Retry of failed lines"):
what the call asks for, the new batch's parameters, and its input file, copied line by line
from the original input file by byte offset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from lowtide import errors
from lowtide.blobs import BlobStore, BlobWriter
from lowtide.domain.controls import FailedRequest
from lowtide.domain.records import BatchRecord
from lowtide.domain.validation import TEST_ENDPOINT
from lowtide.service import control_params
from lowtide.service.batches import CreateParams, parse_completion_window
from lowtide.service.idempotency import check_key

__all__ = ["TEST_ENDPOINT", "RetryParams", "copy_lines", "create_params", "parse"]

#: Error codes a retry may name, at most.
MAX_CODES = 100
_MAX_CODE = 256


@dataclass(frozen=True, slots=True)
class RetryParams:
    """What a retry asks for: its idempotency key, the error codes of the lines to retry
    (None: every failed line), and the controls that differ from the original batch's."""

    key: str | None
    codes: frozenset[str] | None
    changes: dict[str, Any] = field(default_factory=dict)

    def canonical(self, batch_id: str) -> dict[str, Any]:
        """What an idempotency key is compared on."""
        codes = sorted(self.codes) if self.codes is not None else None
        return {"batch_id": batch_id, "codes": codes, **self.changes}


def parse(params: Any, header_key: str | None) -> RetryParams:
    """The body of ``POST /batches/{id}/retry`` (empty, or a JSON object), checked."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    header = check_key(header_key)
    body = check_key(params.get("idempotency_key"), "idempotency_key")
    if header is not None and body is not None and header != body:
        raise errors.InvalidValue(
            "The Idempotency-Key header and the 'idempotency_key' parameter differ.",
            param="idempotency_key",
        )
    return RetryParams(header or body, _codes(params.get("codes")), control_params.parse(params))


def _codes(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_CODES
        or not all(isinstance(c, str) and 0 < len(c) <= _MAX_CODE for c in value)
    ):
        raise errors.InvalidValue(
            f"'codes' must be a list of 1 to {MAX_CODES} error codes, such as "
            '["upstream_timeout", "batch_expired"].',
            param="codes",
        )
    return frozenset(value)


def create_params(source: BatchRecord, input_file_id: str, asked: RetryParams) -> CreateParams:
    """The new batch: the original's endpoint, window, controls (unless the retry changes
    them) and metadata, with ``metadata.retry_of`` naming the original."""
    window, seconds = parse_completion_window(source.completion_window)
    controls = {
        "priority": source.priority,
        "max_cost": source.max_cost,
        "max_error_rate": source.max_error_rate,
        **asked.changes,
    }
    return CreateParams(
        endpoint=source.endpoint,
        completion_window=window,
        window_seconds=seconds,
        input_file_id=input_file_id,
        metadata={**(source.metadata or {}), "retry_of": source.id},
        output_expires_after=source.output_expires_after,
        **controls,
    )


async def copy_lines(
    blobs: BlobStore,
    key: str,
    failed: AsyncIterator[list[FailedRequest]],
    codes: frozenset[str] | None,
    out: BlobWriter,
) -> int:
    """Write to ``out`` the lines of ``failed`` (those of ``codes``, if given) as the input
    file ``key`` holds them, in line order, each ended by a newline; returns how many. The
    input is read once, from start to end: memory holds one chunk and one line."""
    chunks = blobs.stream(key)
    try:
        return await _copy(chunks, key, failed, codes, out)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # a stream left before its end lets go of its file or connection


async def _copy(
    chunks: AsyncIterator[bytes],
    key: str,
    failed: AsyncIterator[list[FailedRequest]],
    codes: frozenset[str] | None,
    out: BlobWriter,
) -> int:
    pos, buffer, picked = 0, b"", 0
    async for page in failed:
        for request in page:
            if codes is not None and request.code not in codes:
                continue
            end = request.offset + request.length
            while pos + len(buffer) < end:
                chunk = await anext(chunks, None)
                if chunk is None:
                    raise errors.StorageError(f"the input file {key} is shorter than its lines")
                if pos + len(buffer) <= request.offset:
                    pos, buffer = pos + len(buffer), chunk  # all of it before the line
                else:
                    buffer += chunk
            start = request.offset - pos
            await out.write(buffer[start : start + request.length] + b"\n")
            pos, buffer = end, buffer[start + request.length :]
            picked += 1
    return picked
