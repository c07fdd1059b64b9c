"""Run a batch in ``validating``: stream its input file through the validator, then store one
row per request (offsets only: bodies stay in the file) or fail the batch with its errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lowtide import metrics
from lowtide.blobs import BlobStore
from lowtide.domain import validation
from lowtide.domain.records import BatchRecord, JsonDict, Pricing
from lowtide.settings import Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)


async def validate_batch(
    store: Store,
    blobs: BlobStore,
    batch: BatchRecord,
    owner: str,
    *,
    serves: Callable[[str], bool],
    limits: validation.Limits,
    pricing_of: Callable[[str], Pricing],
    prefix_order: bool = True,
) -> bool:
    """Validate one claimed batch; True if it moved to in_progress. With ``prefix_order``
    its requests are ranked for sending (``lowtide.domain.prefix``), else sent in file order."""
    started = time.monotonic()
    source = await input_of(store, batch)
    if source is None or source[0] != "batch":
        problem = file_problem(batch.input_file_id, source[0] if source else None)
        await store.fail_validation(batch.id, owner, [problem], int(time.time()))
        return False
    validator = validation.Validator(batch.endpoint, serves, limits, prefix_order=prefix_order)
    async for chunk in blobs.stream(source[1]):
        validator.feed(chunk)
    result = validator.finish()
    metrics.VALIDATION_SECONDS.observe(time.monotonic() - started)
    now = int(time.time())
    logger.info(
        "batch %s validated in %.2fs: %d requests (%d prefix groups), %d errors",
        batch.id,
        time.monotonic() - started,
        len(result.requests),
        len({r.prefix_group for r in result.requests} - {0}),
        len(result.errors),
    )
    if not result.ok or result.model is None:
        if await store.fail_validation(batch.id, owner, [e.to_dict() for e in result.errors], now):
            metrics.BATCHES_FINISHED.labels("failed").inc()
            logger.info(
                "batch %s failed validation",
                batch.id,
                extra={"action": "batch_status", "batch_id": batch.id, "status": "failed"},
            )
        return False
    return await store.finish_validation(
        batch.id, owner, result.requests, result.model, pricing_of(result.model), now
    )


async def input_of(store: Store, batch: BatchRecord) -> tuple[str, str] | None:
    """(purpose, blob key) of the batch's input file, if it has one.

    A file deleted after the batch was created is still its input: the delete kept it for
    the batch (``Store.kept_input``), which is asked second so that a delete committed
    between the two reads is seen by one of them.
    """
    file = await store.get_file(batch.account, batch.input_file_id)
    if file is not None:
        return file.purpose, file.blob_key
    return await store.kept_input(batch.id)


def file_problem(input_file_id: str, purpose: str | None) -> JsonDict:
    """The error of a missing input file, or one not for batches (docs/api-compatibility.md,
    "Create batch")."""
    if purpose is None:
        message = f"Cannot find file {input_file_id}, or it is not accessible to this account."
    else:
        message = f"File {input_file_id} does not have purpose 'batch'."
    return {"code": "invalid_request", "message": message, "param": "input_file_id", "line": None}


def validation_limits(settings: Settings) -> validation.Limits:
    """The limits a batch's input file is validated against (``[limits]``)."""
    conf = settings.limits
    return validation.Limits(
        max_lines=conf.max_lines,
        max_file_bytes=conf.max_file_bytes,
        max_line_bytes=conf.max_line_bytes,
    )
