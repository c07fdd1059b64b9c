"""One chunk, driven through its states (``lowtide.domain.offload``) to ``done``.

Every upstream side effect is recorded before and after it happens, so that whoever drives the
chunk next (this worker after a restart, another after this one's lease ran out) knows what may
have happened upstream:

- an upload is sent only from ``claimed``; a driver that may have sent one before (a restart,
  an upload with no answer) first looks for the file by its name;
- a create is sent only after ``creating`` and its count are recorded; a driver that finds
  ``creating`` first lists the upstream's batches for the one that carries the chunk's id
  (the create also carries it as its ``Idempotency-Key``), and creates only if there is none;
- outcomes are recorded fenced by each request's lease epoch, so recording them twice (a crash
  while collecting) changes nothing; the counts of what ran upstream are then read back from
  the requests themselves, so they are right however many times that happened;
- upstream files are deleted only once every outcome is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lowtide import errors
from lowtide.backends.base import Unreachable
from lowtide.backends.batch_api import Gone, Refused, UpstreamBatch
from lowtide.domain.offload import (
    CLAIMED,
    CLEANING,
    COLLECTING,
    CREATING,
    DONE,
    RUNNING,
    UPLOADED,
    UPSTREAM_ENDED,
    Chunk,
    ChunkLine,
)
from lowtide.domain.records import BatchRecord
from lowtide.domain.status import Status
from lowtide.domain.work import Outcome
from lowtide.engine.offload import chunking, results

if TYPE_CHECKING:
    from lowtide.engine.offload.offloader import Offloader, Route

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Outcomes recorded in one group commit while collecting.
RECORD_GROUP = 1000
#: Refusals in a row (an error status that is not worth waiting out: 400, 401, 413...) of an
#: upload or a create, after which the chunk's lines go back to be run elsewhere.
MAX_REFUSALS = 3
#: Seconds an upstream batch that lowtide asked to cancel may take to end: past them, its
#: lines go back without its partial results (the batch must end, whatever the upstream does).
CANCEL_PATIENCE = 600.0
_RETRYABLE = frozenset({408, 409, 429})


class LostLease(Exception):
    """Another worker took the chunk over: this driver stops at once."""


def chunk_file_name(chunk_id: str) -> str:
    return f"lowtide-{chunk_id}.jsonl"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the unfinished lines of an ended upstream batch become (``results.Unfinished``),
    and whether the batch's lines should be run elsewhere for a while."""

    unfinished: results.Unfinished
    elsewhere: bool


class ChunkDriver:
    def __init__(self, off: Offloader, route: Route, chunk: Chunk, *, fresh: bool) -> None:
        """``fresh``: this driver made the chunk and has sent nothing upstream for it yet."""
        self.off, self.route, self.chunk, self.fresh = off, route, chunk, fresh
        self.refusals = 0
        self.cancel_at: float | None = None

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        failures = 0
        while self.chunk.state != DONE and not self.off.stopping:
            try:
                await self._step()
                failures = 0
                self.refusals = 0
            except LostLease:
                logger.info("chunk %s: taken over by another worker", self.chunk.id)
                return
            except (Unreachable, Refused, errors.StorageError) as exc:
                failures += 1
                if await self._refused_for_good(exc):
                    continue
                await self._trouble(exc, failures)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                logger.exception("chunk %s: step %s failed", self.chunk.id, self.chunk.state)
                await self._trouble(exc, failures)

    async def _step(self) -> None:
        state = self.chunk.state
        if state == CLAIMED:
            await self._upload()
        elif state == UPLOADED:
            await self._create()
        elif state == CREATING:
            await self._find_or_create()
        elif state == RUNNING:
            await self._poll()
        elif state == COLLECTING:
            await self._collect()
        elif state == CLEANING:
            await self._clean()

    # --- steps -------------------------------------------------------------------------------

    async def _upload(self) -> None:
        batch = await self._batch()
        if _stopping(batch):
            await self._give_back(find_orphan=not self.fresh)
            return
        active = self.off.active.get(self.chunk.batch_id)
        if active is None:  # in progress but not dispatched now (paused): send nothing new
            await self.off.sleep(self.route.conf.poll_interval)
            return
        async with self.off.uploads:
            lines = await self.off.store.chunk_lines(self.chunk.id)
            with tempfile.TemporaryFile() as data:
                try:
                    size = await chunking.build_file(
                        self.off.blobs,
                        active.input_blob_key,
                        lines,
                        self.route.plan(active.model, active.endpoint),
                        active.endpoint,
                        self.route.limits,
                        data,
                    )
                except chunking.TooLarge as exc:
                    await self._fail_whole(exc.message)
                    return
                name = chunk_file_name(self.chunk.id)
                file_id = None
                if not self.fresh:  # an upload may have reached the upstream, its answer lost
                    file_id = await self._api_call(
                        self.route.api.find_file, name, self.chunk.created_at
                    )
                if file_id is None:
                    self.fresh = False
                    data.seek(0)
                    file_id = await self._api_call(self.route.api.upload, name, data)
        self.chunk.file_id, self.chunk.bytes, self.chunk.state = file_id, size, UPLOADED
        await self._save()

    async def _create(self) -> None:
        batch = await self._batch()
        if _stopping(batch):
            await self._give_back()
            return
        if self.chunk.batch_id not in self.off.active:
            await self.off.sleep(self.route.conf.poll_interval)
            return
        await self._send_create()

    async def _find_or_create(self) -> None:
        found = await self._api_call(
            self.route.api.find_batch, self.chunk.id, self.chunk.created_at
        )
        if found is not None:
            await self._running(found)
            return
        batch = await self._batch()
        if _stopping(batch):
            await self._give_back()
            return
        if self.chunk.batch_id not in self.off.active:
            await self.off.sleep(self.route.conf.poll_interval)
            return
        await self._send_create()

    async def _send_create(self) -> None:
        # Recorded before it is sent: whoever finds "creating" looks upstream before creating.
        self.chunk.state = CREATING
        self.chunk.creates += 1
        await self._save()
        assert self.chunk.file_id is not None
        file_id, active = self.chunk.file_id, self.off.active[self.chunk.batch_id]
        made = await self._api_call(
            self.route.api.create,
            file_id,
            active.endpoint,
            self.chunk.window,
            self.chunk.id,
            self.chunk.batch_id,
        )
        await self._running(made)

    async def _running(self, upstream: UpstreamBatch) -> None:
        self.chunk.upstream_id, self.chunk.upstream_status = upstream.id, upstream.status
        self.chunk.state = RUNNING
        await self._save()
        logger.info(
            "chunk %s of batch %s: %d lines in upstream batch %s on %s",
            self.chunk.id,
            self.chunk.batch_id,
            self.chunk.lines,
            upstream.id,
            self.route.conf.name,
            extra={"action": "offload_running", "batch_id": self.chunk.batch_id},
        )

    async def _poll(self) -> None:
        upstream_id = self.chunk.upstream_id
        assert upstream_id is not None
        batch = await self._batch()
        if _stopping(batch) and not self.chunk.cancel_sent:
            await self._api_call(self.route.api.cancel, upstream_id)
            self.chunk.cancel_sent = True
            await self._save()
        if self.chunk.cancel_sent and self.cancel_at is None:
            self.cancel_at = time.monotonic()
        found = await self._api_call(self.route.api.get, upstream_id)
        changed = found.status != self.chunk.upstream_status
        self.chunk.upstream_status = found.status
        if found.status in UPSTREAM_ENDED:
            self.chunk.output_file_id = found.output_file_id
            self.chunk.error_file_id = found.error_file_id
            self.chunk.error = found.errors
            self.chunk.state = COLLECTING
            await self._save()
            return
        if self.cancel_at is not None and time.monotonic() - self.cancel_at > CANCEL_PATIENCE:
            logger.warning("chunk %s: the upstream did not end after a cancel", self.chunk.id)
            await self._give_back()
            return
        if changed:
            await self._save()
        await self.off.sleep(self.route.conf.poll_interval)

    async def _collect(self) -> None:
        found: dict[int, dict[str, object]] = {}
        lost = False
        for file_id in (self.chunk.output_file_id, self.chunk.error_file_id):
            if file_id is None:
                continue
            try:
                data = await self._api_call(self.route.api.content, file_id)
            except Gone:
                lost = True
                continue
            found.update(results.parse(data))
        plan = self._unfinished(lost)
        if plan.elsewhere:
            # Before the lines go back to pending: a look of the offloader while they are
            # recorded would otherwise put them in a new chunk for this same backend.
            self.off.avoid(self.chunk.batch_id, self.route)
        await self._record_all(found, plan.unfinished)

    def _unfinished(self, lost: bool) -> Plan:
        status = self.chunk.upstream_status
        if self.chunk.cancel_sent:
            return Plan(results.Unfinished(give_back=True), elsewhere=False)
        if lost:
            message = "The upstream lost the results of the batch this request ran in."
            return Plan(results.Unfinished(False, "upstream_output_lost", message), True)
        if status == "failed":
            message = f"The upstream batch failed: {self.chunk.error or 'no reason given'}."
            return Plan(results.Unfinished(False, "upstream_batch_failed", message), True)
        if status == "cancelled":
            message = "The upstream batch was cancelled (not by lowtide) before this request ran."
            return Plan(results.Unfinished(False, "upstream_batch_cancelled", message), True)
        if status == "expired":
            return Plan(results.Unfinished(False), elsewhere=True)
        message = "The upstream batch ended without a result for this request."
        return Plan(results.Unfinished(False, "upstream_result_missing", message), True)

    async def _clean(self) -> None:
        if self.route.conf.delete_files:
            # Every copy of its input file: a worker whose lease ran out while its upload was
            # on the way may have stored one besides the one the chunk used.
            copies = await self._api_call(
                self.route.api.find_files, chunk_file_name(self.chunk.id), self.chunk.created_at
            )
            ids = [self.chunk.file_id, self.chunk.output_file_id, self.chunk.error_file_id]
            for file_id in dict.fromkeys([*ids, *copies]):
                if file_id is not None:
                    await self._api_call(self.route.api.delete, file_id)
        self.chunk.state = DONE
        await self._save()

    # --- giving lines back, recording outcomes -------------------------------------------------

    async def _give_back(self, *, find_orphan: bool = False) -> None:
        """Before any upstream batch: every line back as it was (an upload whose answer was
        lost is found by its name, so that cleaning deletes it)."""
        if find_orphan and self.chunk.file_id is None:
            name = chunk_file_name(self.chunk.id)
            self.chunk.file_id = await self._api_call(
                self.route.api.find_file, name, self.chunk.created_at
            )
        lines = await self.off.store.chunk_lines(self.chunk.id)
        await self._record(lines, results.give_back(self.chunk.batch_id, lines), {})

    async def _fail_whole(self, message: str) -> None:
        """The upstream will not take the chunk (it refused its file or its batch): its lines
        are retried, an attempt spent, elsewhere if the model has another backend."""
        logger.warning("chunk %s: the upstream refused it: %s", self.chunk.id, message)
        self.chunk.error = message
        batch = await self._batch()
        unfinished = results.Unfinished(
            give_back=_stopping(batch),
            code="upstream_batch_failed",
            message=f"The upstream refused the batch this request was in: {message}",
        )
        self.off.avoid(self.chunk.batch_id, self.route)  # first, as in _collect
        await self._record_all({}, unfinished)

    async def _record_all(
        self, found: dict[int, dict[str, object]], unfinished: results.Unfinished
    ) -> None:
        lines = await self.off.store.chunk_lines(self.chunk.id)
        collected = results.collect(
            self.chunk.batch_id,
            lines,
            found,
            unfinished,
            self.off.policy,
            self.route.final(),
        )
        await self._record(lines, collected.outcomes, collected.tokens)

    async def _record(
        self,
        lines: Sequence[ChunkLine],
        outcomes: Sequence[Outcome],
        tokens: dict[int, tuple[int, int, int, int]],
    ) -> None:
        """Commit ``outcomes`` (fenced: again after a crash, nothing changes twice), then read
        back which lines got their result from this chunk, and move it to ``cleaning``."""
        store = self.off.store
        for start in range(0, len(outcomes), RECORD_GROUP):
            group = outcomes[start : start + RECORD_GROUP]
            finished = await store.record_outcomes(group, int(time.time()))
            self.chunk.recorded = min(self.chunk.lines, self.chunk.recorded + len(group))
            await self._save()
            if finished:
                self.off.on_finished(finished)
        mine = await store.chunk_results(self.chunk.id)
        completed = [line for line, succeeded in mine if succeeded]
        sums = [0, 0, 0, 0]
        for line in completed:
            for i, value in enumerate(tokens.get(line, (0, 0, 0, 0))):
                sums[i] += value
        chunk = self.chunk
        chunk.completed, chunk.failed = len(completed), len(mine) - len(completed)
        chunk.tokens = (sums[0], sums[1], sums[2], sums[3])
        chunk.recorded, chunk.state, chunk.updated_at = len(lines), CLEANING, time.time()
        if not await store.finish_chunk(chunk):
            raise LostLease
        logger.info(
            "chunk %s of batch %s: %d lines answered upstream (%d failed), %d sent back",
            chunk.id,
            chunk.batch_id,
            len(mine),
            chunk.failed,
            len(lines) - len(mine),
            extra={"action": "offload_collected", "batch_id": chunk.batch_id},
        )

    # --- plumbing ----------------------------------------------------------------------------

    async def _batch(self) -> BatchRecord | None:
        return await self.off.store.get_batch(None, self.chunk.batch_id)

    async def _save(self) -> None:
        self.chunk.updated_at = time.time()
        if not await self.off.store.save_chunk(self.chunk):
            raise LostLease

    async def _api_call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(*args)``, once the backend's ``Retry-After`` (if any) has passed; whether it
        got an answer goes into the backend's state."""
        await self.route.unpaused(self.off.sleep)
        try:
            found = await fn(*args)
        except Unreachable as exc:
            self.route.unanswered(exc.message)
            raise
        except Refused:
            self.route.answered()
            raise
        self.route.answered()
        return found

    async def _refused_for_good(self, exc: Exception) -> bool:
        """True if ``exc`` ended the chunk's time upstream and its lines went back: its
        upstream batch vanished (404 on its own id), or an upload or create was refused with
        a status not worth waiting out, ``MAX_REFUSALS`` times in a row."""
        if isinstance(exc, Gone) and self.chunk.state == RUNNING:
            await self._fail_whole("the upstream batch is gone (404)")
            return True
        if not isinstance(exc, Refused) or isinstance(exc, Gone):
            return False
        if exc.status in _RETRYABLE or exc.status >= 500:
            return False
        if self.chunk.state not in (CLAIMED, UPLOADED, CREATING):
            return False
        self.refusals += 1
        if self.refusals < MAX_REFUSALS:
            return False
        if self.chunk.state == CREATING:
            # An earlier create with no answer may have made the batch after all.
            found = await self._api_call(
                self.route.api.find_batch, self.chunk.id, self.chunk.created_at
            )
            if found is not None:
                await self._running(found)
                return True
        await self._fail_whole(exc.message)
        return True

    async def _trouble(self, exc: Exception, failures: int) -> None:
        self.chunk.error = f"{type(exc).__name__}: {exc}"[:1000]
        wait = min(max(1.0, self.route.conf.poll_interval), 0.5 * 2 ** min(failures, 10))
        wait = random.uniform(wait / 2, wait)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            self.route.pause(retry_after)
            wait = max(wait, retry_after)
        logger.warning(
            "chunk %s (%s): %s; trying again in %.1f s",
            self.chunk.id,
            self.chunk.state,
            self.chunk.error,
            wait,
            extra={"action": "offload_trouble", "batch_id": self.chunk.batch_id},
        )
        await self.off.sleep(wait)


def _stopping(batch: BatchRecord | None) -> bool:
    """The lowtide batch sends nothing more: cancelled, stopped by a cap, expiring, gone."""
    return batch is None or batch.status != Status.IN_PROGRESS
