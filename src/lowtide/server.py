"""The composition root: builds the store, blobs, backends, engine and app from settings."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import FastAPI

from lowtide import errors, metrics
from lowtide.api.app import create_app
from lowtide.api.middleware import ApiPrecedence
from lowtide.backends.base import Backend
from lowtide.backends.openai_http import OpenAIHTTPBackend
from lowtide.backends.test_model import TEST_MODEL, TestModelBackend
from lowtide.blobs import BlobStore, open_blobs
from lowtide.domain.status import Status
from lowtide.engine.engine import Engine
from lowtide.engine.router import Router
from lowtide.engine.threaded import EngineThread
from lowtide.service.ratelimit import (
    WINDOW,
    MemoryRateLimiter,
    RateLimiter,
    StoreRateLimiter,
)
from lowtide.settings import LOOPBACK_HOSTS, Settings
from lowtide.store import Store, open_store

logger = logging.getLogger(__name__)

#: The GIL switch interval while the engine has a thread of its own: how long the API's thread
#: waits, at most, for a GIL that the engine does not give up by itself (Python's default is
#: 5 ms), several times per API call. Measured with bench/control_plane.py and bench/dispatch.py
#: in one sitting (busy p99 of retrieve / list; dispatch CPU per request): 1 ms 23-28 / 35-40
#: ms, 175-200 µs; 0.2 ms 20-23 / 24-27 ms, 167-173 µs; 0.05 ms 15 / 20 ms but 204 µs and 13%
#: less throughput (the SQLite threads then take the GIL from the engine far more often).
SWITCH_INTERVAL = 0.0002
#: ... and while the API has a request in flight (``ApiPrecedence``): the engine then hands the
#: GIL back almost at once. Same sitting, busy p99 of retrieve / list: 19.8 / 27.4 ms without,
#: 14.7-15.4 / 18.6-20.1 ms with 0.02 ms (5 µs did no better); dispatch CPU per request with
#: the bench's polls every 0.1 s: 180 µs against 191 µs (noise). A long upload or download
#: slows dispatch while it lasts: the API comes first.
API_SWITCH_INTERVAL = 0.00002


def build_router(settings: Settings) -> Router:
    backends: list[tuple[Backend, list[str]]] = [(TestModelBackend(), [TEST_MODEL])]
    backends += [(OpenAIHTTPBackend(b), list(b.models)) for b in settings.http_backends()]
    return Router(backends)


def check_exposure(settings: Settings) -> None:
    """Without keys every caller is the same account: allow that only on loopback."""
    if settings.keys_required():
        return
    if settings.server.host not in LOOPBACK_HOSTS:
        if _database_has_keys(settings):
            return
        raise errors.ConfigError(
            f"refusing to listen on {settings.server.host} without API keys: add [[api_keys]] "
            "to the config or make one with `lowtide keys create`, or listen on 127.0.0.1"
        )
    logger.warning(
        "no API keys in the config: unless `lowtide keys create` made some, every caller is "
        "account 'default' (listening on loopback only)"
    )


def _database_has_keys(settings: Settings) -> bool:
    """Keys made with ``lowtide keys create`` count as keys (checked before serving)."""

    async def check() -> bool:
        store = open_store(settings.server.resolved_database_url())
        await store.open()
        try:
            return await store.has_api_keys()
        finally:
            await store.close()

    try:
        return asyncio.run(check())
    except errors.StorageError as exc:
        raise errors.ConfigError(exc.message) from exc


@dataclass
class Server:
    settings: Settings
    store: Store
    blobs: BlobStore
    router: Router
    engine: Engine | None = None
    #: Rate-limit counters: in memory for one process, in the database for a fleet.
    limiter: RateLimiter | None = None
    #: ``lowtide serve``: the engine runs on a thread and event loop of its own, away from the
    #: API's requests (None: on the caller's loop, as in ``lowtide worker``).
    engine_thread: EngineThread | None = None
    #: Move what start() allocated out of the collector's reach (see ``start``). A process that
    #: builds many servers (the in-process tests) turns it off: frozen objects are never freed.
    freeze_gc: bool = True
    app: FastAPI = field(init=False)
    _background: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self.app = create_app(
            self.settings,
            self.store,
            self.blobs,
            wake=self.wake,
            on_startup=self.start,
            on_shutdown=self.stop,
            refreshers=self._refreshers(),
            limiter=self.limiter,
        )
        if self.engine_thread is not None:
            self.app.add_middleware(ApiPrecedence, interval=API_SWITCH_INTERVAL)

    def _refreshers(self) -> list[Callable[[], Awaitable[None]]]:
        found: list[Callable[[], Awaitable[None]]] = [self.refresh_backend_gauges]
        if self.settings.metrics.store_gauges:
            found.append(self.refresh_store_gauges)
        return found

    async def refresh_store_gauges(self) -> None:
        counts, pending = await self.store.status_summary()
        for status in Status:
            metrics.BATCHES.labels(status.value).set(counts.get(status.value, 0))
        metrics.LINES_PENDING.set(pending)

    async def refresh_backend_gauges(self) -> None:
        for backend in self.router.backends():
            slot = self.router.slot(backend.name)
            metrics.CONCURRENCY_LIMIT.labels(backend.name).set(slot.capacity())

    def wake(self) -> None:
        if self.engine_thread is not None:
            self.engine_thread.wake()
        elif self.engine is not None:
            self.engine.wake()
        # Engines in other processes (scale-out mode) hear of it through the store.
        task = asyncio.get_running_loop().create_task(self.store.notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        await self.store.open()
        await self.blobs.open()
        if self.engine_thread is not None:
            await self.engine_thread.start()
        elif self.engine is not None:
            await self.engine.start()
        # Everything allocated so far lives as long as the process: moving it out of the
        # collector's reach makes full collections (event-loop pauses of 60-70 ms measured
        # during dispatch) several times cheaper.
        if self.freeze_gc:
            gc.collect()
            gc.freeze()

    async def stop(self) -> None:
        if self.engine_thread is not None:
            await self.engine_thread.stop()  # it closes the backends, on the engine's loop
        else:
            if self.engine is not None:
                await self.engine.stop()
            for backend in self.router.backends():
                await backend.close()
        await self.blobs.close()
        await self.store.close()


def build_server(
    settings: Settings,
    *,
    with_engine: bool = True,
    engine_thread: bool = False,
    freeze_gc: bool = True,
) -> Server:
    """``lowtide serve`` (API and engine), or with ``with_engine=False`` the API alone, or
    ``lowtide worker`` (the engine alone, its server's app unused).

    ``engine_thread``: run the engine on a thread and event loop of its own (``lowtide serve``),
    so that the API's requests never queue behind its dispatch work. ``freeze_gc``: see
    ``Server.freeze_gc``."""
    url = settings.server.resolved_database_url()
    store = open_store(url)
    blobs = open_blobs(settings.server.resolved_storage_url(), settings.s3)
    router = build_router(settings)
    shared = not url.startswith("sqlite")
    window = settings.testing.rate_limit_window_seconds or WINDOW
    limiter = StoreRateLimiter(store, window) if shared else MemoryRateLimiter(window)
    if not with_engine:
        return Server(settings, store, blobs, router, None, limiter, freeze_gc=freeze_gc)
    exclusive = not shared  # a SQLite database belongs to one process; PostgreSQL to a fleet
    if not engine_thread:
        engine = Engine(settings, store, blobs, router, exclusive=exclusive)
        return Server(settings, store, blobs, router, engine, limiter, freeze_gc=freeze_gc)
    # A PostgreSQL pool is bound to the loop that opened it: the engine's loop needs its own.
    # The SQLite store runs its calls on its own threads, from either loop: one store (and so
    # one writer) for both.
    engine_store = open_store(url) if shared else None
    engine = Engine(settings, engine_store or store, blobs, router, exclusive=exclusive)
    thread = EngineThread(
        engine, backends=router.backends(), store=engine_store, switch_interval=SWITCH_INTERVAL
    )
    return Server(settings, store, blobs, router, engine, limiter, thread, freeze_gc=freeze_gc)
