"""Claims pending requests and sends them to backends, never over a backend's ceiling.

One claim loop: it asks the router how many slots a batch's model has free, claims at most
that many requests in one statement, and starts one task per request. Batches are served
earliest deadline first. Results go to the ``ResultSink``, which commits them in groups.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from lowtide import errors
from lowtide.backends.base import Unreachable
from lowtide.blobs import BlobStore
from lowtide.domain.work import FAILED, ActiveBatch, Claim, Outcome
from lowtide.engine import outcomes
from lowtide.engine.events import wait_event
from lowtide.engine.router import Router, Slot
from lowtide.engine.sink import ResultSink
from lowtide.store import Store

logger = logging.getLogger(__name__)

_MAX_CLAIM = 512  # requests claimed in one statement
_ACTIVE_REFRESH = 0.5  # seconds between reloads of the list of active batches


class Dispatcher:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        router: Router,
        sink: ResultSink,
        *,
        owner: str,
        lease: float,
        policy: outcomes.RetryPolicy,
        poll_interval: float,
        on_outcome: Callable[[ActiveBatch, Outcome], None] | None = None,
    ) -> None:
        self.store, self.blobs, self.router, self.sink = store, blobs, router, sink
        self.owner, self.lease, self.policy = owner, lease, policy
        self.poll_interval = poll_interval
        self.on_outcome = on_outcome
        self.tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._active: list[ActiveBatch] = []
        self._active_loaded = 0.0

    def wake(self) -> None:
        """Something changed (a new batch, a cancel): look again at once."""
        self._active_loaded = 0.0
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()

    async def run(self) -> None:
        while not self._stopping:
            claimed, starved = await self._round()
            if claimed:
                await asyncio.sleep(0)
            elif starved:
                await self._wait_for_slot()
            else:
                await self._idle()

    async def _wait_for_slot(self) -> None:
        # A slot frees when a request finishes, or when a paused backend's pause ends.
        timeout = min(self.poll_interval, self.router.next_unpause() or self.poll_interval)
        if await wait_event(self._slot_freed, timeout):
            # Let a few more requests finish so one claim statement fills several slots.
            await asyncio.sleep(0.002)

    async def _idle(self) -> None:
        timeout = self.poll_interval
        retry_at = await self.store.next_retry_at()
        if retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - time.time()))
        if (unpause := self.router.next_unpause()) is not None:
            timeout = min(timeout, unpause)
        await wait_event(self._wake, timeout)

    async def _round(self) -> tuple[int, bool]:
        claimed, starved = 0, False
        for batch in await self._batches():
            if self._stopping:
                break
            free = self.router.free(batch.model)
            if free <= 0:
                starved = True
                continue
            claims = await self.store.claim_requests(
                batch.id, self.owner, min(free, _MAX_CLAIM), time.time(), self.lease
            )
            for claim in claims:
                self._start(batch, claim)
            claimed += len(claims)
        return claimed, starved

    async def _batches(self) -> list[ActiveBatch]:
        now = time.monotonic()
        if now - self._active_loaded > _ACTIVE_REFRESH:
            self._active = await self.store.active_batches()
            self._active_loaded = now
        return self._active

    def _start(self, batch: ActiveBatch, claim: Claim) -> None:
        slot = self.router.acquire(batch.model)
        assert slot is not None, "claimed no more than the free slots"
        task = asyncio.create_task(self._send(batch, claim, slot))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: ActiveBatch, claim: Claim, slot: Slot) -> None:
        try:
            outcome = await self._attempt(batch, claim, slot)
        finally:
            self.router.release(slot)
            self._slot_freed.set()
        self.sink.add(outcome)
        if self.on_outcome is not None:
            self.on_outcome(batch, outcome)

    async def _attempt(self, batch: ActiveBatch, claim: Claim, slot: Slot) -> Outcome:
        try:
            raw = await self.blobs.read_range(batch.input_blob_key, claim.offset, claim.length)
        except errors.StorageError as exc:
            logger.error("cannot read request %s:%d: %s", batch.id, claim.line, exc)
            return Outcome(
                claim.batch_id,
                claim.line,
                claim.epoch,
                FAILED,
                attempts=claim.attempts,
                error_code="input_unavailable",
                error_message="The request could not be read from the input file.",
            )
        body = _request_body(raw, slot.backend.model_name(batch.model))
        try:
            reply = await slot.backend.send(_backend_path(batch.endpoint), body)
        except Unreachable as exc:
            return outcomes.from_unreachable(claim, exc, self.policy)
        if reply.retry_after is not None and reply.status in (429, 503):
            self.router.pause(slot, reply.retry_after)
            logger.info(
                "backend %s paused for %.1fs (HTTP %d)",
                slot.backend.name,
                reply.retry_after,
                reply.status,
            )
        return outcomes.from_reply(claim, reply, self.policy)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for requests in flight, then cancel the rest
        (their leases are released by the caller, so they run again after a restart)."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


def _request_body(raw: bytes, model: str) -> bytes:
    line = orjson.loads(raw)
    body = line["body"]
    if body.get("model") != model:
        body["model"] = model  # the backend may know the model by another name
    return orjson.dumps(body)


def _backend_path(endpoint: str) -> str:
    # Backends are configured with a base URL ending in /v1, as the openai SDK expects.
    return endpoint.removeprefix("/v1")
