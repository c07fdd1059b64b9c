"""The ASGI application: the Files and Batches API under ``/v1`` and ``/compatible-mode/v1``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

import lowtide
from lowtide.api import backends, batches, controls, errors, files, health, metrics, openapi, web
from lowtide.api.auth import Authenticator
from lowtide.api.middleware import LimitBodies, RateLimitHeaders, RejectBodyOnReads
from lowtide.blobs import BlobStore
from lowtide.service.backends import BackendService
from lowtide.service.batches import BatchService
from lowtide.service.controls import ControlService
from lowtide.service.estimate import EstimateService
from lowtide.service.files import FileService
from lowtide.service.ratelimit import MemoryRateLimiter, RateLimiter
from lowtide.settings import Settings
from lowtide.store import Store

PREFIXES = ("/v1", "/compatible-mode/v1")


def create_app(
    settings: Settings,
    store: Store,
    blobs: BlobStore,
    *,
    wake: Callable[[], None],
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    refreshers: Sequence[Callable[[], Awaitable[None]]] = (),
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """Build the app; ``on_startup`` / ``on_shutdown`` open and close what the caller wired."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            if on_shutdown is not None:
                await on_shutdown()

    app = FastAPI(
        title="lowtide",
        version=lowtide.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="A self-hosted Batch API for LLM requests.",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.blobs = blobs
    app.state.auth = Authenticator(settings, store)
    app.state.limiter = limiter or MemoryRateLimiter()
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(LimitBodies, uploads=[prefix + "/files" for prefix in PREFIXES])
    app.add_middleware(RejectBodyOnReads)
    app.state.files = FileService(settings, store, blobs)
    app.state.backends = BackendService(settings, store)
    app.state.batches = BatchService(settings, store, wake, app.state.backends)
    app.state.controls = ControlService(settings, store, blobs, app.state.batches)
    app.state.estimates = EstimateService(settings, store, blobs)
    app.state.metrics_refreshers = list(refreshers)
    errors.install(app)
    for prefix in PREFIXES:
        app.include_router(files.router, prefix=prefix)
        app.include_router(controls.router, prefix=prefix)  # before /batches/{batch_id}
        app.include_router(batches.router, prefix=prefix)
        app.include_router(backends.router, prefix=prefix)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(web.router)
    openapi.install(app, PREFIXES)
    return app
