"""The engine: the side tasks that move batches along, started and stopped together.

- validation: claims batches in ``validating`` and checks their files;
- dispatch: claims requests and sends them to backends (``Dispatcher``);
- commit: group-commits outcomes (``ResultSink``);
- upkeep: heartbeats, expiry, lease reclaim, and finalisation of batches that are ready;
- health: probes of the backends, at start-up and then periodically (``HealthMonitor``), and
  what this engine sees of them, published for the API (``BackendReporter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from lowtide.backends.shaping import Shaping
from lowtide.backends.test_model import TEST_MODEL
from lowtide.blobs import BlobStore
from lowtide.domain import validation
from lowtide.domain.records import Pricing
from lowtide.engine import outcomes, retention
from lowtide.engine.callbacks import send_callback
from lowtide.engine.capacity import CapacityKeeper
from lowtide.engine.dispatcher import Dispatcher
from lowtide.engine.events import wait_event
from lowtide.engine.finalizer import finalize
from lowtide.engine.health import HealthMonitor
from lowtide.engine.offload.offloader import Offloader
from lowtide.engine.pacing import Pacing
from lowtide.engine.reporting import BackendReporter
from lowtide.engine.router import Router
from lowtide.engine.sink import ResultSink
from lowtide.engine.validating import validate_batch
from lowtide.settings import Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        blobs: BlobStore,
        router: Router,
        *,
        exclusive: bool = True,
    ) -> None:
        """``exclusive``: this is the only engine on the store (SQLite mode), so leases left
        by a previous run of this process can be released at once on start-up."""
        self.settings, self.store, self.blobs, self.router = settings, store, blobs, router
        self.exclusive = exclusive
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        conf = settings.engine
        self.lease = conf.lease_seconds
        self.sink = ResultSink(
            store,
            interval=conf.commit_interval,
            max_batch=conf.commit_batch,
            on_finished=self._finalize_soon,
            on_committed=lambda group: self.dispatcher.committed(group),
        )
        policy = outcomes.RetryPolicy(
            conf.max_attempts, conf.retry_base_delay, conf.retry_max_delay
        )
        self.dispatcher = Dispatcher(
            store,
            blobs,
            router,
            self.sink,
            owner=self.owner,
            lease=self.lease,
            policy=policy,
            poll_interval=conf.poll_interval,
            outage_grace=conf.outage_grace,
            shaping=Shaping(settings),
        )
        self.capacity = (
            None
            if exclusive
            else CapacityKeeper(
                store,
                router,
                [b.name for b in settings.http_backends()],
                owner=self.owner,
                lease=self.lease,
            )
        )
        configured = {b.name for b in settings.http_backends()}  # the test model needs no probe
        self.health = HealthMonitor(
            [(s.backend, s.health, s.held) for s in router.slots() if s.backend.name in configured],
            interval_up=conf.probe_interval,
            interval_down=conf.probe_interval_down,
            on_change=self.dispatcher.backend_changed,
        )
        self.reporter = BackendReporter(store, router, self.owner, configured)
        #: Adaptive limits and rpm/tpm budgets of the backends, on the router's slots.
        self.pacing = Pacing(settings, router, store, owner=self.owner, shared=not exclusive)
        #: Lines sent to hosted Batch APIs (``kind = "batch"`` backends), if any is configured.
        self.offload = (
            Offloader(
                settings,
                store,
                blobs,
                owner=self.owner,
                lease=self.lease,
                policy=policy,
                exclusive=exclusive,
                on_finished=self._finalize_soon,
            )
            if settings.batch_backends()
            else None
        )
        self._validate_wake = asyncio.Event()
        self._finalize_queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._commit_task: asyncio.Task[None] | None = None
        self._callbacks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.started_at = 0.0

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = time.time()
        if self.exclusive:
            released = await self.store.release_leases(None)
            if released:
                logger.info("released %d requests leased by a previous run", released)
        await self.store.subscribe(self.wake)
        if self.capacity is not None:
            self.capacity.start_empty()
            self._spawn("capacity", self.capacity.run)
        self._spawn("health", self._health_loop)
        self._spawn("backend reports", self.reporter.run)
        self._spawn("pacing", self.pacing.run)
        self._spawn("dispatch", self.dispatcher.run)
        self._commit_task = self._spawn("commit", self.sink.run)
        self._spawn("validation", self._validation_loop)
        self._spawn("finalisation", self._finalize_loop)
        self._spawn("upkeep", self._upkeep_loop)
        self._spawn("retention", self._retention_loop)
        if self.offload is not None:
            self._spawn("offload", self.offload.run)

    def _spawn(self, name: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        async def guarded() -> None:
            # A side task that dies would silently stop batches: log it and start it again.
            while not self._stopping:
                try:
                    await fn()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("engine task %s failed; restarting it", name)
                    await asyncio.sleep(1.0)

        task = asyncio.create_task(guarded(), name=f"lowtide-{name}")
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        """Stop claiming, let in-flight requests finish (bounded), commit, release leases."""
        self._stopping = True
        self.health.stop()
        self.reporter.stop()
        self.dispatcher.stop()
        if self.offload is not None:
            self.offload.stop()
        self._validate_wake.set()
        await self.dispatcher.drain(self.settings.engine.shutdown_grace)
        await self.pacing.close()
        # The commit task ends by itself after one last flush. Cancelled, it would drop the
        # group it was writing (a write still queued for SQLite's writer thread never runs; a
        # PostgreSQL transaction rolls back), and those answered requests would be sent again.
        # Bounded by the lease: a store that hangs longer than that has lost our leases anyway.
        self.sink.stop()
        if self._commit_task is not None:
            await asyncio.wait({self._commit_task}, timeout=self.lease)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.offload is not None:
            await self.offload.drain()
        await self.sink.flush()
        if self.capacity is not None:
            self.capacity.stop()
            await self.capacity.release_all()
        await self.reporter.forget()
        released = await self.store.release_leases(self.owner)
        logger.info("engine stopped; %d requests released for the next run", released)

    async def wait_ended(self) -> asyncio.Task[None]:
        """Return the first side task to end. Before ``stop()`` none should: one that did
        (it returned, or a ``BaseException`` its guard lets through ended it) means the engine
        no longer works, however healthy the process looks."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        return done.pop()

    def wake(self) -> None:
        """A batch was created or cancelled: look at once rather than at the next poll."""
        self._validate_wake.set()
        self.dispatcher.wake()
        if self.offload is not None:
            self.offload.wake()

    # --- side tasks --------------------------------------------------------------------------

    async def _validation_loop(self) -> None:
        limits = self._limits()
        while not self._stopping:
            batch = await self.store.claim_validation(self.owner, time.time(), self.lease)
            if batch is None:
                await wait_event(self._validate_wake, self.settings.engine.poll_interval)
                continue
            async with self._holding(batch.id, "validation"):
                started = await validate_batch(
                    self.store,
                    self.blobs,
                    batch,
                    self.owner,
                    serves=self._serves,
                    limits=limits,
                    pricing_of=self._pricing,
                    prefix_order=self.settings.scheduling.prefix_order,
                )
                if started:
                    self.dispatcher.wake()

    async def _health_loop(self) -> None:
        await self.health.probe_all()
        await self.health.run()

    async def _finalize_loop(self) -> None:
        while not self._stopping:
            batch_id = await self._finalize_queue.get()
            self._queued.discard(batch_id)
            async with self._holding(batch_id, "finalisation"):
                if await finalize(
                    self.store,
                    self.blobs,
                    batch_id,
                    self.owner,
                    self.lease,
                    retention=self.settings.retention.batch_days * 86400,
                ):
                    self._call_back(batch_id)

    @contextlib.asynccontextmanager
    async def _holding(self, batch_id: str, work: str) -> AsyncIterator[None]:
        """On a failure (storage full or unreachable...), log it and give the batch's lease
        back: our heartbeat would otherwise keep it leased, and stuck, for ever."""
        try:
            yield
        except Exception:
            logger.exception("batch %s: %s failed; will try again", batch_id, work)
            await self.store.release_batch(batch_id, self.owner)
            await asyncio.sleep(1.0)  # the cause (a full disk) rarely clears at once

    async def _upkeep_loop(self) -> None:
        last_beat = 0.0
        while not self._stopping:
            now = time.time()
            if now - last_beat >= self.lease / 3:
                await self.store.heartbeat(self.owner, now + self.lease)
                last_beat = now
            if await self.store.expire_due(int(now)):
                self.dispatcher.wake()
            await self.store.reclaim_expired_leases(now)
            self._finalize_soon(await self.store.batches_to_finalize(now))
            await asyncio.sleep(min(1.0, self.settings.engine.poll_interval))

    # --- retention: expired files, old batches' rows, lapsed idempotency keys ----------------

    async def _retention_loop(self) -> None:
        conf = self.settings.retention
        while not self._stopping:
            await retention.sweep(
                self.store,
                self.blobs,
                now=int(time.time()),
                batch_retention_seconds=conf.batch_days * 86400,
            )
            await asyncio.sleep(conf.sweep_interval_seconds)

    def _call_back(self, batch_id: str) -> None:
        async def call() -> None:
            batch = await self.store.get_batch(None, batch_id)
            if batch is not None:
                await send_callback(batch, self.settings.callbacks)

        task = asyncio.create_task(call())
        self._callbacks.add(task)
        task.add_done_callback(self._callbacks.discard)

    def _finalize_soon(self, batch_ids: list[str]) -> None:
        for batch_id in batch_ids:
            if batch_id not in self._queued:
                self._queued.add(batch_id)
                self._finalize_queue.put_nowait(batch_id)

    # --- policy ------------------------------------------------------------------------------

    def _serves(self, model: str) -> bool:
        served = self.router.serves(model) or (
            self.offload is not None and self.offload.serves(model)
        )
        return model != TEST_MODEL and served

    def _pricing(self, model: str) -> Pricing:
        billing = self.settings.billing
        if model == TEST_MODEL:
            return Pricing(0.0, 0.0, billing.batch_discount, billing.currency)  # free
        prices = self.settings.models.get(model)
        if prices is None:
            return Pricing(0.0, 0.0, billing.batch_discount, billing.currency)
        return Pricing(
            prices.input_price, prices.output_price, billing.batch_discount, prices.currency
        )

    def _limits(self) -> validation.Limits:
        conf = self.settings.limits
        return validation.Limits(
            max_lines=conf.max_lines,
            max_file_bytes=conf.max_file_bytes,
            max_line_bytes=conf.max_line_bytes,
        )
