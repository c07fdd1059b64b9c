"""Use cases of the batch controls (docs/extensions.md): pause and resume a batch, read its
results so far, and retry its failed lines as a new batch."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from lowtide import errors
from lowtide.blobs import BlobStore
from lowtide.domain import controls, ids, lines
from lowtide.domain.records import BatchRecord, FileRecord, JsonDict
from lowtide.domain.status import TERMINAL, Status
from lowtide.domain.work import RequestState
from lowtide.service import retry
from lowtide.service.batches import BatchService
from lowtide.service.idempotency import Attempt
from lowtide.settings import Settings
from lowtide.store import Store, rows

logger = logging.getLogger(__name__)

#: ``kind`` of ``GET /batches/{id}/results``: which result lines to send.
RESULT_KINDS = ("all", "output", "errors")
_SUCCEEDED = int(RequestState.SUCCEEDED)
_FAILED = int(RequestState.FAILED)
RETRY_KIND = "retry"


@dataclass(frozen=True, slots=True)
class Results:
    """An answer of ``GET /batches/{id}/results``: the lines, and where they stand.

    ``last_line``: every line of the kinds asked, after ``after`` and up to it, that had a
    result when the answer was read is in the answer (a client asks for what is new with
    ``after`` set to it; with ``contiguous`` that never gives a line twice). ``done_through``:
    every line up to it has its result, and it will not change.
    """

    last_line: int
    done_through: int
    lines: AsyncIterator[bytes]


class ControlService:
    def __init__(
        self, settings: Settings, store: Store, blobs: BlobStore, batches: BatchService
    ) -> None:
        self.settings, self.store, self.blobs, self.batches = settings, store, blobs, batches

    # --- pause and resume --------------------------------------------------------------------

    async def pause(self, account: str, batch_id: str) -> BatchRecord:
        """Pause an in_progress batch (a paused one is answered as it is); 409 otherwise."""
        await self.batches.get(account, batch_id)  # 404 for unknown, foreign or retired ids
        batch = await self.store.pause_batch(account, batch_id, int(time.time()))
        return await self._moved(batch, batch_id, "pause", "paused")

    async def resume(self, account: str, batch_id: str) -> BatchRecord:
        """Resume an in_progress batch (one not paused is answered as it is); 409 otherwise."""
        await self.batches.get(account, batch_id)
        batch = await self.store.resume_batch(account, batch_id, int(time.time()))
        return await self._moved(batch, batch_id, "resume", "resumed")

    async def _moved(
        self, batch: BatchRecord | None, batch_id: str, verb: str, done: str
    ) -> BatchRecord:
        if batch is None:
            raise errors.NotFound(f"Batch {batch_id} not found.", param="batch_id")
        if batch.status != Status.IN_PROGRESS:
            raise errors.Conflict(
                f"Cannot {verb} a batch with status '{batch.status.value}': only a batch "
                "in_progress can be paused or resumed."
            )
        logger.info(
            "batch %s %s",
            batch_id,
            done,
            extra={"action": f"batch_{verb}", "batch_id": batch_id},
        )
        self.batches.wake()  # the engines look at the running batches again at once
        return await self.batches.get(batch.account, batch_id)

    # --- results so far ----------------------------------------------------------------------

    async def results(
        self, account: str | None, batch_id: str, query: Mapping[str, str]
    ) -> Results:
        """The result lines of the batch so far, after ``after``, of ``kind``, in line order
        (``contiguous``: only up to the first line without a result)."""
        kind = query.get("kind", "all")
        if kind not in RESULT_KINDS:
            raise errors.InvalidValue(
                f"Invalid value for 'kind': '{kind}'. Supported values are: 'all', 'output' "
                "and 'errors'.",
                param="kind",
            )
        after = _line_number(query.get("after"))
        contiguous = _flag(query.get("contiguous"), "contiguous")
        batch = await self.batches.get(account, batch_id)
        marks = await self.store.result_marks(batch.id, after)
        ended = [m for m in (marks.last_output, marks.last_error) if m is not None]
        through = (
            marks.first_pending - 1 if marks.first_pending is not None else max([after, *ended])
        )
        if contiguous:
            last = through
        else:
            wanted = (
                (marks.last_output if kind == "output" else marks.last_error)
                if kind != "all"
                else max(ended, default=None)
            )
            last = max(after, wanted or 0)
        return Results(last, through, self._lines(batch, kind, after, last))

    async def _lines(
        self, batch: BatchRecord, kind: str, after: int, last: int
    ) -> AsyncIterator[bytes]:
        outputs, errors_ = kind in ("all", "output"), kind in ("all", "errors")
        unrun: tuple[str, str] | None = None
        async for chunk in self.store.iter_results(batch.id, after):
            for line, state, custom_id, result in chunk:
                if line > last:
                    return
                if state == _SUCCEEDED and outputs and result is not None:
                    yield result
                elif state == _FAILED and errors_:
                    if result is not None:
                        yield result
                        continue
                    # A request that never ran: its line is made now, as finalisation makes
                    # it, from the end the batch was given (read again if it had none yet).
                    if unrun is None:
                        unrun = await self._unrun_reason(batch)
                    assert custom_id is not None
                    yield lines.unrun_line(batch.id, line, custom_id, unrun)

    async def _unrun_reason(self, batch: BatchRecord) -> tuple[str, str]:
        if batch.end_status is None:
            batch = await self.store.get_batch(None, batch.id) or batch
        end = batch.end_status or Status.EXPIRED
        return controls.unrun_reason(end, batch.stop_reason) or (
            lines.EXPIRED_CODE,
            lines.EXPIRED_MESSAGE,
        )

    # --- retry of failed lines ---------------------------------------------------------------

    async def retry_idempotent(
        self, account: str, batch_id: str, params: Any, header_key: str | None
    ) -> JsonDict:
        """``POST /batches/{id}/retry``: a new batch of the lines of a finished batch that
        ended in error (of ``codes``, if given), once per idempotency key."""
        asked = retry.parse(params, header_key)
        source = await self.batches.get(account, batch_id)
        if source.status not in TERMINAL:
            raise errors.Conflict(
                f"Cannot retry a batch with status '{source.status.value}': only a finished "
                "batch (completed, failed, expired or cancelled) can be retried."
            )
        if source.failed == 0:
            raise _nothing_to_retry(source.id, asked.codes)
        attempt = None
        if asked.key is not None:
            attempt = Attempt.start(account, RETRY_KIND, asked.key, asked.canonical(batch_id))
            held = await self.store.find_idempotency(account, RETRY_KIND, asked.key, attempt.since)
            if held is not None:
                return attempt.replay(held)
        if source.endpoint == retry.TEST_ENDPOINT:
            await self.batches.check_test_quota(account)
        new_file, picked = await self._retry_file(account, source, asked.codes)
        record = self.batches.new_record(
            account,
            retry.create_params(source, new_file.id, asked),
        )
        response = record.to_api()
        claim = attempt.claim(response) if attempt is not None else None
        try:
            held = await self.store.create_retry(new_file, record, claim)
        except BaseException:
            await self.blobs.delete(new_file.blob_key)
            raise
        if held is not None and attempt is not None:
            await self.blobs.delete(new_file.blob_key)  # a retry of the call got there first
            return attempt.replay(held)
        self.batches.created(record)
        logger.info(
            "batch %s retries %d failed lines of %s",
            record.id,
            picked,
            batch_id,
            extra={"action": "batch_retry", "batch_id": record.id, "retry_of": batch_id},
        )
        return response

    async def _retry_file(
        self, account: str, source: BatchRecord, codes: frozenset[str] | None
    ) -> tuple[FileRecord, int]:
        """The input file of the retry: the original lines of the failed requests, read by
        byte offset from the batch's input file, in line order."""
        key = await self._input_blob(account, source)
        limits = self.settings.limits_for(account)
        count, used = await self.store.file_usage(account)
        if count >= limits.max_files:
            raise errors.QuotaExceeded(
                f"Upload file number exceed limit: the account keeps {count} files, the quota "
                f"is {limits.max_files}. Delete files to make room.",
                param="batch_id",
            )
        file_id = ids.new_input_file_id()
        blob_key = rows.input_blob_key(file_id)
        async with self.blobs.writer(blob_key) as writer:
            picked = await retry.copy_lines(
                self.blobs, key, self.store.failed_requests(source.id), codes, writer
            )
            size = writer.size
        if not picked or used + size > limits.max_bytes:
            await self.blobs.delete(blob_key)
            if not picked:
                raise _nothing_to_retry(source.id, codes)
            raise errors.QuotaExceeded(
                "Upload file capacity exceed limit: the retry's input file does not fit the "
                "account's storage quota.",
                param="batch_id",
            )
        record = FileRecord(
            id=file_id,
            account=account,
            purpose="batch",
            filename=f"{source.id}_retry.jsonl",
            bytes=size,
            created_at=int(time.time()),
            blob_key=blob_key,
        )
        return record, picked

    async def _input_blob(self, account: str, source: BatchRecord) -> str:
        file = await self.store.get_file(account, source.input_file_id)
        key = file.blob_key if file is not None else None
        if key is None:
            kept = await self.store.kept_input(source.id)
            key = kept[1] if kept is not None else None
        if key is None or not await self.blobs.exists(key):
            raise errors.Conflict(
                f"The input file {source.input_file_id} of batch {source.id} was deleted: its "
                "lines cannot be read again.",
                param="batch_id",
                code="input_file_deleted",
            )
        return key


def _nothing_to_retry(batch_id: str, codes: frozenset[str] | None) -> errors.Conflict:
    """The batch has no failed line (of the codes asked): a 409, as for a batch not finished,
    since it is the batch's state that refuses the call."""
    which = "" if codes is None else " with the code " + " or ".join(sorted(codes))
    return errors.Conflict(
        f"Batch {batch_id} has no failed lines{which} to retry.",
        param="codes" if codes is not None else "batch_id",
        code="nothing_to_retry",
    )


def _line_number(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit() or len(text) > 10:
        raise errors.InvalidValue(
            "'after' must be a line number: a whole number from 0.", param="after"
        )
    return int(text)


def _flag(text: str | None, name: str) -> bool:
    if text is None or text == "false":
        return False
    if text == "true":
        return True
    raise errors.InvalidValue(f"'{name}' must be true or false.", param=name)
