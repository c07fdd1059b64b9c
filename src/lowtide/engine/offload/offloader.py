"""The offloader: one loop in each engine that sends lines to hosted Batch APIs
(docs/offload.md).

Every ``TICK`` seconds (and at once when a batch is created or cancelled) it

- renews the leases of the chunks it drives, and takes over unfinished chunks whose lease ran
  out (its own after a restart, another worker's after that one died), each driven by a
  ``ChunkDriver`` task of its own;
- looks at every batch in progress whose model has a batch backend, and makes new chunks of
  its pending lines: all of them (``spill = false``), or as many as the HTTP backends will not
  end in time (``spill = true``, ``lowtide.engine.offload.spill``);
- fails at once the lines that can never run: those of a model that only batch backends serve
  when the batch's time left is shorter than the upstream's window (plus the margin), and
  lines longer than the upstream takes (``offload_window_too_short``, ``offload_line_too_large``).
  Where the model has HTTP backends, those lines simply stay with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from lowtide.backends.batch_api import BatchApi
from lowtide.backends.dialects import DIALECTS
from lowtide.backends.shaping import Plan, build_plan
from lowtide.blobs import BlobStore
from lowtide.domain.backends import REPORT_EVERY, BackendReport
from lowtide.domain.offload import (
    CLAIMED,
    DONE,
    HELD_UNTIL,
    Chunk,
    Offloaded,
    UpstreamLimits,
    holder,
    window_hours,
)
from lowtide.domain.records import BatchRecord
from lowtide.domain.work import FAILED, ActiveBatch, Outcome
from lowtide.engine import outcomes
from lowtide.engine.health import DOWN_AFTER
from lowtide.engine.offload import chunking, results, spill
from lowtide.engine.offload.driver import ChunkDriver
from lowtide.settings import BackendSettings, Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)

#: Seconds between two looks at the batches and the chunks' leases (at most; the engine's
#: ``poll_interval`` when it is shorter).
TICK = 1.0
#: Chunks taken over in one look.
_ADOPT = 100
#: Seconds a batch's lines stay off a batch backend after an upstream batch of theirs failed
#: or expired there, so that HTTP backends of the model run them meanwhile ("elsewhere").
ELSEWHERE_SECONDS = 300.0
#: Uploads built and sent at once (each holds its file in memory: up to the upstream's limit).
_UPLOADS = 2
WINDOW_TOO_SHORT = "offload_window_too_short"
LINE_TOO_LARGE = "offload_line_too_large"


@dataclass
class Route:
    """One batch backend as the offloader uses it."""

    conf: BackendSettings
    api: BatchApi
    limits: UpstreamLimits
    #: Seconds an upstream batch's window lasts (``[testing] offload_window_seconds`` aside).
    window_seconds: float
    models: dict[str, Any] = field(default_factory=dict)
    record_sent_body: bool = False
    _plans: dict[tuple[str, str], Plan] = field(default_factory=dict)
    _paused_until: float = 0.0
    #: Whether the upstream answers, as this engine sees it (``/v1/backends``, ``/ready``, a
    #: batch's ``waiting_for``): down after ``DOWN_AFTER`` calls in a row got no answer.
    up: bool = True
    since: float = field(default_factory=time.time)
    error: str | None = None
    _unanswered: int = 0

    def answered(self) -> None:
        self._unanswered = 0
        if not self.up:
            logger.warning("batch backend %s answers again", self.conf.name)
            self.up, self.since = True, time.time()

    def unanswered(self, error: str) -> None:
        self._unanswered += 1
        self.error = error
        if self.up and self._unanswered >= DOWN_AFTER:
            logger.warning("batch backend %s is down: %s", self.conf.name, error)
            self.up, self.since = False, time.time()

    def plan(self, model: str, endpoint: str) -> Plan:
        key = (model, endpoint)
        found = self._plans.get(key)
        if found is None:
            name = self.conf.model_aliases.get(model, model)
            found = self._plans[key] = build_plan(name, self.conf, self.models.get(model), endpoint)
        return found

    def final(self) -> Callable[[int, Any], bool] | None:
        """An error answer that is final although its status is retryable (the dialect's)."""
        return DIALECTS[self.conf.dialect].final

    def pause(self, seconds: float) -> None:
        """The upstream said when to come back (``Retry-After``): nothing is sent before."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def unpaused(self, sleep: Callable[[float], Awaitable[None]]) -> None:
        while (left := self._paused_until - time.monotonic()) > 0:
            await sleep(left)


class Offloader:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        *,
        owner: str,
        lease: float,
        policy: outcomes.RetryPolicy,
        exclusive: bool,
        on_finished: Callable[[list[str]], None],
    ) -> None:
        self.store, self.blobs, self.owner, self.lease = store, blobs, owner, lease
        self.policy, self.exclusive, self.on_finished = policy, exclusive, on_finished
        self.tick = min(TICK, settings.engine.poll_interval)
        override = settings.testing.offload_window_seconds
        self.routes = {
            conf.name: Route(
                conf,
                BatchApi(conf),
                conf.upstream_limits(),
                override or window_hours(conf.window()) * 3600.0,
                dict(settings.models),
            )
            for conf in settings.batch_backends()
        }
        self.by_model: dict[str, list[Route]] = {}
        for route in self.routes.values():
            for model in route.conf.models:
                self.by_model.setdefault(model, []).append(route)
        self.http_models = {m for b in settings.http_backends() for m in b.models}
        #: Batches in progress, as the last look found them (drivers read their input files).
        self.active: dict[str, ActiveBatch] = {}
        self.uploads = asyncio.Semaphore(_UPLOADS)
        self.stopping = False
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._meters: dict[str, spill.PaceMeter] = {}
        self._avoid: dict[tuple[str, str], float] = {}
        self._last_beat = 0.0
        self._reported: tuple[tuple[bool, int], ...] | None = None
        self._reported_at = 0.0
        #: Looks taken so far (a test waits for a few to pass).
        self.looks = 0

    def serves(self, model: str) -> bool:
        return model in self.by_model

    # --- life cycle --------------------------------------------------------------------------

    async def run(self) -> None:
        if self.exclusive:
            # Alone on the store: chunks leased by this process's previous life are taken
            # over now, not when their lease would have run out.
            await self.store.release_chunks(None)
        while not self.stopping:
            await self._look()
            await self._wait(self._wake, self.tick)

    def wake(self) -> None:
        """A batch was created or cancelled: plan, and let drivers look at their batch."""
        self._wake.set()
        self._kick.set()
        self._kick = asyncio.Event()

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    async def drain(self) -> None:
        """Stop the drivers (their chunks' state is recorded) and let others take them over."""
        tasks = list(self._drivers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.store.release_chunks(self.owner)
        for route in self.routes.values():
            with contextlib.suppress(Exception):
                await route.api.close()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``wake`` (a batch was cancelled: look at it now)."""
        await self._wait(self._kick, seconds)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.001))
        if event.is_set():
            event.clear()

    def avoid(self, batch_id: str, route: Route) -> None:
        """An upstream batch of ``batch_id`` failed or expired on ``route``: where the model
        has HTTP backends, its lines go to them for a while instead."""
        self._avoid[(batch_id, route.conf.name)] = time.monotonic() + ELSEWHERE_SECONDS

    # --- one look ----------------------------------------------------------------------------

    async def _look(self) -> None:
        self.looks += 1
        now = time.time()
        if now - self._last_beat >= self.lease / 3:
            await self.store.renew_chunks(self.owner, now + self.lease)
            self._last_beat = now
        self.active = {b.id: b for b in await self.store.active_batches()}
        self._forget_ended()
        for chunk in await self.store.claim_chunks(self.owner, now, self.lease, _ADOPT):
            self._drive(chunk, fresh=False)
        await self._report(now)
        mine = [b for b in self.active.values() if b.model in self.by_model]
        shares = await self.store.offload_shares([b.id for b in mine])
        for batch in mine:
            if self.stopping:
                return
            try:
                await self._plan(batch, shares.get(batch.id))
            except Exception:
                logger.exception("offload planning of batch %s failed", batch.id)

    def _forget_ended(self) -> None:
        """Forget the paces of batches no longer dispatched (a paused batch's pace is measured
        again when it resumes) and the avoided backends whose time is up."""
        for batch_id in [b for b in self._meters if b not in self.active]:
            del self._meters[batch_id]
        now = time.monotonic()
        for key in [k for k, until in self._avoid.items() if until <= now]:
            del self._avoid[key]

    async def _report(self, now: float) -> None:
        """What this engine sees of its batch backends, for the API (as ``BackendReporter``
        does for the HTTP ones): whether they answer, and the chunks it drives on each."""
        driving = {name: 0 for name in self.routes}
        for driver in self._drivers.values():
            name = driver.get_name()
            driving[name] = driving.get(name, 0) + 1
        states = tuple((r.up, driving[name]) for name, r in self.routes.items())
        if states == self._reported and now - self._reported_at < REPORT_EVERY:
            return
        reports = [
            BackendReport(name, self.owner, r.up, r.since, r.error, 0, driving[name], now)
            for name, r in self.routes.items()
        ]
        await self.store.report_backends(reports, now)
        self._reported, self._reported_at = states, now

    def _drive(self, chunk: Chunk, *, fresh: bool) -> None:
        """Drive ``chunk`` (as leased now) in a task of its own. A driver of ours may still run
        it under an older lease epoch: this engine stalled past the chunk's lease and took it
        back itself. That driver can write nothing more (its epoch is stale), and this engine
        renews the chunk's lease, so no one else would ever drive it: it gives way to a new
        driver with the current epoch."""
        old = self._drivers.get(chunk.id)
        if old is not None:
            old.cancel()
        route = self.routes.get(chunk.backend)
        if route is None:
            work = self._orphaned(chunk)
        else:
            work = ChunkDriver(self, route, chunk, fresh=fresh).run()
        task = asyncio.create_task(work, name=chunk.backend)
        self._drivers[chunk.id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._drivers.get(chunk.id) is done:
                del self._drivers[chunk.id]

        task.add_done_callback(forget)

    async def _orphaned(self, chunk: Chunk) -> None:
        """A chunk of a batch backend no longer configured: lowtide cannot reach its upstream
        batch any more (nor cancel it), so its lines go back, to run elsewhere; whatever that
        batch still runs upstream is never recorded."""
        logger.error(
            "chunk %s belongs to batch backend %s, which is no longer configured: its %d lines "
            "go back; its upstream batch %s is left as it is",
            chunk.id,
            chunk.backend,
            chunk.lines,
            chunk.upstream_id,
        )
        lines = await self.store.chunk_lines(chunk.id)
        finished = await self.store.record_outcomes(
            results.give_back(chunk.batch_id, lines), int(time.time())
        )
        if finished:
            self.on_finished(finished)
        chunk.state, chunk.recorded, chunk.updated_at = DONE, len(lines), time.time()
        chunk.error = "its batch backend is no longer configured"
        await self.store.finish_chunk(chunk)

    async def _plan(self, batch: ActiveBatch, shares: tuple[Offloaded, int] | None) -> None:
        record = await self.store.get_batch(None, batch.id)
        if record is None or getattr(record, "paused_at", None) is not None:
            return
        route = self._route_for(batch)
        if route is None:
            return
        now = time.time()
        local = batch.model in self.http_models
        margin = route.conf.deadline_margin
        if now + route.window_seconds > batch.expires_at - margin:
            if not local:
                await self._fail_pending(batch, route, WINDOW_TOO_SHORT)
            return
        if not local:
            await self._fail_oversized(batch, route)
        want = self._wanted(batch, record, route, shares, now)
        while want > 0 and not self.stopping:
            made = await self._chunk(batch, route, want)
            if made == 0:
                return
            want -= made

    def _route_for(self, batch: ActiveBatch) -> Route | None:
        """The first batch backend of the model not avoided for this batch; when every one
        is, none if the model has HTTP backends to go to instead, else the first."""
        routes = self.by_model.get(batch.model, [])
        now = time.monotonic()
        for route in routes:
            if self._avoid.get((batch.id, route.conf.name), 0.0) <= now:
                return route
        if batch.model in self.http_models or not routes:
            return None
        return routes[0]

    def _wanted(
        self,
        batch: ActiveBatch,
        record: BatchRecord,
        route: Route,
        shares: tuple[Offloaded, int] | None,
        now: float,
    ) -> int:
        """How many more lines to offload now."""
        offloaded, recorded = shares if shares is not None else (Offloaded(()), 0)
        done = record.completed + record.failed
        remaining = record.total - done - offloaded.running
        if not route.conf.spill or batch.model not in self.http_models:
            return remaining
        meter = self._meters.setdefault(batch.id, spill.PaceMeter())
        meter.add(time.monotonic(), done - offloaded.lines - recorded)
        return spill.spill_needed(
            now=now,
            deadline=batch.expires_at,
            margin=route.conf.deadline_margin,
            window=route.window_seconds,
            remaining=remaining,
            pace=meter.pace(),
            tick=self.tick,
        )

    async def _chunk(self, batch: ActiveBatch, route: Route, want: int) -> int:
        """Make one chunk of up to ``want`` of the batch's pending lines; how many it took."""
        now = time.time()
        candidates = await self.store.offload_candidates(
            batch.id,
            now,
            chunking.longest_line(route.limits),
            min(want, route.limits.max_lines),
            last=route.conf.spill,
        )
        lines = chunking.fit(candidates, route.limits, want)
        if not lines:
            return 0
        chunk = Chunk(
            id="chunk_" + secrets.token_hex(12),
            batch_id=batch.id,
            backend=route.conf.name,
            state=CLAIMED,
            lines=len(lines),
            price_factor=route.conf.price_factor,
            window=route.conf.window(),
            created_at=now,
            lease_owner=self.owner,
            lease_epoch=1,
            lease_until=now + self.lease,
            updated_at=now,
        )
        taken = await self.store.take_lines(batch.id, holder(chunk.id), HELD_UNTIL, lines, chunk)
        if not taken:
            return 0
        logger.info(
            "batch %s: %d lines offloaded to %s (chunk %s)",
            batch.id,
            len(taken),
            route.conf.name,
            chunk.id,
            extra={"action": "offload_chunk", "batch_id": batch.id},
        )
        self._drive(chunk, fresh=True)
        return len(taken)

    async def _fail_pending(self, batch: ActiveBatch, route: Route, code: str) -> None:
        hours = route.window_seconds / 3600
        message = (
            f"This request could not run: its model is served only by the batch backend "
            f"{route.conf.name}, whose window ({hours:g}h) plus the margin "
            f"({route.conf.deadline_margin:g} s) does not fit in the time the batch has left."
        )
        now = time.time()
        found = await self.store.offload_candidates(batch.id, now, 2**31 - 1, 1000, last=False)
        await self._fail(batch, [line for line, _ in found], code, message)

    async def _fail_oversized(self, batch: ActiveBatch, route: Route) -> None:
        longest = chunking.longest_line(route.limits)
        found = await self.store.offload_oversized(batch.id, time.time(), longest, 1000)
        message = (
            f"This request is longer than the batch backend {route.conf.name} takes "
            f"({route.limits.max_line_bytes} bytes with room for lowtide's changes), and no "
            "other backend serves its model."
        )
        await self._fail(batch, found, LINE_TOO_LARGE, message)

    async def _fail(self, batch: ActiveBatch, lines: list[int], code: str, message: str) -> None:
        if not lines:
            return
        now = time.time()
        taken = await self.store.take_lines(batch.id, self.owner, now + self.lease, lines)
        if not taken:
            return
        # A final outcome fenced by the epoch just taken, as any other: nothing is sent.
        failed = [
            Outcome(
                batch.id,
                line,
                epoch,
                FAILED,
                custom_id=custom_id,
                attempts=attempts,
                error_code=code,
                error_message=message,
            )
            for line, epoch, custom_id, attempts in taken
        ]
        finished = await self.store.record_outcomes(failed, int(now))
        logger.warning(
            "batch %s: %d lines cannot run (%s)",
            batch.id,
            len(failed),
            code,
            extra={"action": "offload_refused", "batch_id": batch.id},
        )
        if finished:
            self.on_finished(finished)
