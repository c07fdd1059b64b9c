"""The composition root: builds the store, blobs, backends, engine and app from settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import FastAPI

from lowtide import errors, metrics
from lowtide.api.app import create_app
from lowtide.backends.base import Backend
from lowtide.backends.openai_http import OpenAIHTTPBackend
from lowtide.backends.test_model import TEST_MODEL, TestModelBackend
from lowtide.blobs import BlobStore, open_blobs
from lowtide.engine.engine import Engine
from lowtide.engine.router import Router
from lowtide.service.ratelimit import (
    WINDOW,
    MemoryRateLimiter,
    RateLimiter,
    StoreRateLimiter,
)
from lowtide.settings import LOOPBACK_HOSTS, Settings
from lowtide.store import Store, open_store

logger = logging.getLogger(__name__)


def build_router(settings: Settings) -> Router:
    backends: list[tuple[Backend, list[str]]] = [(TestModelBackend(), [TEST_MODEL])]
    backends += [(OpenAIHTTPBackend(b), list(b.models)) for b in settings.backends]
    return Router(backends)


def check_exposure(settings: Settings) -> None:
    """Without keys every caller is the same account: allow that only on loopback."""
    if settings.keys_required():
        return
    if settings.server.host not in LOOPBACK_HOSTS:
        raise errors.ConfigError(
            f"refusing to listen on {settings.server.host} without API keys: add [[api_keys]] "
            "to the config, or listen on 127.0.0.1"
        )
    logger.warning(
        "no API keys configured: every caller is account 'default' (listening on loopback only)"
    )


@dataclass
class Server:
    settings: Settings
    store: Store
    blobs: BlobStore
    router: Router
    engine: Engine | None = None
    #: Rate-limit counters: in memory for one process, in the database for a fleet.
    limiter: RateLimiter | None = None
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
            refreshers=[self.refresh_backend_gauges],
            limiter=self.limiter,
        )

    async def refresh_backend_gauges(self) -> None:
        for backend in self.router.backends():
            slot = self.router.slot(backend.name)
            metrics.CONCURRENCY_LIMIT.labels(backend.name).set(slot.capacity())

    def wake(self) -> None:
        if self.engine is not None:
            self.engine.wake()
        # Engines in other processes (scale-out mode) hear of it through the store.
        task = asyncio.get_running_loop().create_task(self.store.notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self) -> None:
        await self.store.open()
        await self.blobs.open()
        if self.engine is not None:
            await self.engine.start()

    async def stop(self) -> None:
        if self.engine is not None:
            await self.engine.stop()
        for backend in self.router.backends():
            await backend.close()
        await self.blobs.close()
        await self.store.close()


def build_server(settings: Settings, *, with_engine: bool = True) -> Server:
    """``lowtide serve`` (API and engine), or with ``with_engine=False`` the API alone."""
    url = settings.server.resolved_database_url()
    store = open_store(url)
    blobs = open_blobs(settings.server.resolved_storage_url(), settings.s3)
    router = build_router(settings)
    engine = None
    shared = not url.startswith("sqlite")
    window = settings.testing.rate_limit_window_seconds or WINDOW
    limiter = StoreRateLimiter(store, window) if shared else MemoryRateLimiter(window)
    if with_engine:
        # A SQLite database belongs to one process; PostgreSQL is shared by a fleet.
        engine = Engine(settings, store, blobs, router, exclusive=not shared)
    return Server(settings, store, blobs, router, engine, limiter)
