"""Write a batch's output and error files and move it to its terminal status.

Result lines, rendered when each outcome was recorded, are streamed from the store in line
order and written through two blob writers, so memory stays flat and the files are
deterministic: written again after a crash, they are the same bytes under the same keys.
The files and the terminal status are committed in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from lowtide import metrics
from lowtide.blobs import BlobStore
from lowtide.domain import controls, ids, lines
from lowtide.domain.records import BatchRecord, FileRecord
from lowtide.domain.status import Status
from lowtide.domain.work import RequestState, ResultRow
from lowtide.store import Store

logger = logging.getLogger(__name__)

SUCCEEDED = int(RequestState.SUCCEEDED)


async def finalize(
    store: Store,
    blobs: BlobStore,
    batch_id: str,
    owner: str,
    lease: float,
    *,
    retention: int,
) -> Status | None:
    """Finalise the batch if it is ready and no other worker has it; its result files are kept
    ``retention`` seconds (``retention.batch_days``) unless the batch asked otherwise
    (``output_expires_after``)."""
    batch = await store.claim_finalization(batch_id, owner, time.time(), lease)
    if batch is None:
        return None  # not ready, or another worker has it
    end = batch.end_status or Status.COMPLETED
    unrun = controls.unrun_reason(end, batch.stop_reason)
    with metrics.FINALIZATION_SECONDS.time():
        files = await _write_files(store, blobs, batch, unrun, retention)
    code, message = unrun if unrun else (None, None)
    if not await store.finish_finalization(
        batch_id, owner, end, files, code, message, int(time.time())
    ):
        logger.warning(
            "batch %s: finalisation lost its lease; another worker finishes it", batch_id
        )
        return None
    metrics.BATCHES_FINISHED.labels(end.value).inc()
    logger.info(
        "batch %s %s",
        batch_id,
        end.value,
        extra={"action": "batch_status", "batch_id": batch_id, "status": end.value},
    )
    return end


async def _write_files(
    store: Store,
    blobs: BlobStore,
    batch: BatchRecord,
    unrun: tuple[str, str] | None,
    retention: int,
) -> list[FileRecord]:
    out_key, err_key = f"results/{batch.id}/output", f"results/{batch.id}/errors"
    out_lines = err_lines = 0
    async with AsyncExitStack() as stack:
        out = await stack.enter_async_context(blobs.writer(out_key))
        err = await stack.enter_async_context(blobs.writer(err_key))
        async for chunk in _read_ahead(store.iter_results(batch.id)):
            succeeded, failed = _split(batch.id, chunk, unrun)
            await out.writelines(succeeded)
            await err.writelines(failed)
            out_lines, err_lines = out_lines + len(succeeded), err_lines + len(failed)
    now = int(time.time())
    files = []
    for count, writer, key, new_id, kind in (
        (out_lines, out, out_key, ids.new_output_file_id(), "output"),
        (err_lines, err, err_key, ids.new_error_file_id(), "error"),
    ):
        if count == 0:
            await blobs.delete(key)  # an empty result file is not created (point 10)
            continue
        keep = batch.output_expires_after or retention
        files.append(_file_record(batch, new_id, key, kind, writer.size, now, now + keep))
    return files


def _split(
    batch_id: str, chunk: list[ResultRow], unrun: tuple[str, str] | None
) -> tuple[list[bytes], list[bytes]]:
    """The lines of a chunk of rows: those of the output file and those of the error file.
    They were rendered when the outcomes were recorded; only requests that never ran get
    theirs now. (A loop over 50,000 rows: kept to appends, no call per row.)"""
    succeeded: list[bytes] = []
    failed: list[bytes] = []
    for line, state, custom_id, result in chunk:
        if result is None:
            assert custom_id is not None  # the store gives it exactly when there is no line
            failed.append(lines.unrun_line(batch_id, line, custom_id, unrun))
        elif state == SUCCEEDED:
            succeeded.append(result)
        else:
            failed.append(result)
    return succeeded, failed


async def _read_ahead(chunks: AsyncIterator[list[ResultRow]]) -> AsyncIterator[list[ResultRow]]:
    """Yield each chunk while the store reads the next (its reads run in a thread, mostly
    without the GIL), so that reading and rendering overlap instead of taking turns."""

    async def read_next() -> list[ResultRow] | None:
        return await anext(chunks, None)

    ahead = asyncio.ensure_future(read_next())
    try:
        while (chunk := await ahead) is not None:
            ahead = asyncio.ensure_future(read_next())
            yield chunk
    finally:
        ahead.cancel()


def _file_record(
    batch: BatchRecord, file_id: str, key: str, kind: str, size: int, now: int, expires: int
) -> FileRecord:
    return FileRecord(
        id=file_id,
        account=batch.account,
        purpose="batch_output",
        filename=f"{batch.id}_{kind}.jsonl",
        bytes=size,
        created_at=now,
        blob_key=key,
        expires_at=expires,
    )
