"""Write a batch's output and error files and move it to its terminal status.

Rows are streamed from the store in line order and written through two blob writers, so memory
stays flat and the files are deterministic: written again after a crash, they are the same
bytes under the same keys. The files and the terminal status are committed in one transaction.
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack

from lowtide.blobs import BlobStore, BlobWriter
from lowtide.domain import ids, lines
from lowtide.domain.records import BatchRecord, FileRecord
from lowtide.domain.status import Status
from lowtide.store import Store

logger = logging.getLogger(__name__)

_FLUSH_BYTES = 1 << 20
_RETENTION = 30 * 86400

_UNRUN = {
    Status.EXPIRED: (lines.EXPIRED_CODE, lines.EXPIRED_MESSAGE),
    Status.CANCELLED: (lines.CANCELLED_CODE, lines.CANCELLED_MESSAGE),
}


class _Buffered:
    """Collects lines and hands them to the blob writer in ~1 MiB writes."""

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.parts: list[bytes] = []
        self.pending = 0
        self.lines = 0

    async def add(self, line: bytes) -> None:
        self.parts.append(line)
        self.pending += len(line)
        self.lines += 1
        if self.pending >= _FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.parts:
            await self.writer.write(b"".join(self.parts))
            self.parts, self.pending = [], 0


async def finalize(
    store: Store, blobs: BlobStore, batch_id: str, owner: str, lease: float
) -> Status | None:
    batch = await store.claim_finalization(batch_id, owner, time.time(), lease)
    if batch is None:
        return None  # not ready, or another worker has it
    end = batch.end_status or Status.COMPLETED
    unrun = _UNRUN.get(end)
    files = await _write_files(store, blobs, batch, unrun)
    code, message = unrun if unrun else (None, None)
    if not await store.finish_finalization(
        batch_id, owner, end, files, code, message, int(time.time())
    ):
        logger.warning(
            "batch %s: finalisation lost its lease; another worker finishes it", batch_id
        )
        return None
    logger.info(
        "batch %s %s",
        batch_id,
        end.value,
        extra={"action": "batch_status", "batch_id": batch_id, "status": end.value},
    )
    return end


async def _write_files(
    store: Store, blobs: BlobStore, batch: BatchRecord, unrun: tuple[str, str] | None
) -> list[FileRecord]:
    out_key, err_key = f"results/{batch.id}/output", f"results/{batch.id}/errors"
    async with AsyncExitStack() as stack:
        out = _Buffered(await stack.enter_async_context(blobs.writer(out_key)))
        err = _Buffered(await stack.enter_async_context(blobs.writer(err_key)))
        async for chunk in store.iter_results(batch.id):
            for row in chunk:
                is_output, line = lines.render(batch.id, row, unrun)
                await (out if is_output else err).add(line)
        await out.flush()
        await err.flush()
    now = int(time.time())
    files = []
    for buffered, key, new_id, kind in (
        (out, out_key, ids.new_output_file_id(), "output"),
        (err, err_key, ids.new_error_file_id(), "error"),
    ):
        if buffered.lines == 0:
            await blobs.delete(key)  # an empty result file is not created (point 10)
            continue
        files.append(_file_record(batch, new_id, key, kind, buffered.writer.size, now))
    return files


def _file_record(
    batch: BatchRecord, file_id: str, key: str, kind: str, size: int, now: int
) -> FileRecord:
    keep = batch.output_expires_after or _RETENTION
    return FileRecord(
        id=file_id,
        account=batch.account,
        purpose="batch_output",
        filename=f"{batch.id}_{kind}.jsonl",
        bytes=size,
        created_at=now,
        blob_key=key,
        expires_at=now + keep,
    )
