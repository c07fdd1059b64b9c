"""The retention sweeper: deletes what has outlived its time.

- files past ``expires_at`` (uploads with ``expires_after``, result files after
  ``output_expires_after`` or 30 days): their rows go at once (which frees the account's
  quota), their bytes are queued;
- queued bytes (of those files, and of files deleted through the API) are deleted once no
  live batch reads them: a batch whose input file was deleted keeps running on its bytes;
- request rows of terminal batches past retention (``retention.batch_days``), which no one
  can see any more; the batch rows stay, as the record of usage and cost;
- idempotency keys older than 24 hours.

Rows are removed before bytes, through a queue kept in the database, so a crash at any point
leaves work for the next sweep, never a row whose bytes are gone. Every step is safe to run
on several workers at once (a fleet): each takes rows the others skip, or repeats a delete.
Old rate-limit rows need no sweep: each hit deletes the windows that have ended.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from lowtide.blobs import BlobStore
from lowtide.domain.accounts import IDEMPOTENCY_TTL_SECONDS, SweepReport
from lowtide.store import Store

logger = logging.getLogger(__name__)

#: Rows handled per statement, so that one sweep never holds a long transaction.
CHUNK = 500
#: Batches whose request rows go per statement (up to 50,000 rows each).
BATCH_CHUNK = 10
#: Upper bound of the chunks of one step per sweep; what is left waits for the next sweep.
MAX_CHUNKS = 20

_Step = Callable[[], Awaitable[int]]


async def sweep(
    store: Store, blobs: BlobStore, *, now: int, batch_retention_seconds: int
) -> SweepReport:
    expired = await _repeat(lambda: store.expire_files(now, CHUNK), CHUNK)
    deleted = await _delete_blobs(store, blobs)
    retired = await _repeat(
        lambda: store.retire_batches(now - batch_retention_seconds, BATCH_CHUNK), BATCH_CHUNK
    )
    lapsed = await store.forget_idempotency(now - IDEMPOTENCY_TTL_SECONDS)
    report = SweepReport(expired, deleted, retired, lapsed)
    if report:
        logger.info(
            "retention sweep: %d expired files, %d blobs deleted, %d batches retired, "
            "%d idempotency keys lapsed",
            expired,
            deleted,
            retired,
            lapsed,
            extra={"action": "retention_sweep"},
        )
    return report


async def _repeat(step: _Step, chunk: int) -> int:
    total = 0
    for _ in range(MAX_CHUNKS):
        done = await step()
        total += done
        if done < chunk:
            break
    return total


async def _delete_blobs(store: Store, blobs: BlobStore) -> int:
    total = 0
    for _ in range(MAX_CHUNKS):
        keys = await store.blobs_to_delete(CHUNK)
        for key in keys:
            await blobs.delete(key)  # deleting a blob already gone succeeds
        await store.forget_blob_deletions(keys)
        total += len(keys)
        if len(keys) < CHUNK:
            break
    return total
