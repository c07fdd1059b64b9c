"""Gives each configured backend its adaptive limit and its rpm/tpm budget, and keeps them fed:
the scrapes of engines' metrics, the ``/tokenize`` calls that calibrate token estimates, the
gauges, and the fleet's budget slices given back at shutdown.

The limiters and budgets live on the router's slots (``Slot.limiter``, ``Slot.budget``), where
the dispatcher finds them for every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import orjson

from lowtide import metrics
from lowtide.engine import budgets, engine_metrics
from lowtide.engine.limits import AdaptiveLimit
from lowtide.engine.router import Router, Slot
from lowtide.settings import BackendSettings, Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)

#: Seconds between two refreshes of the limit gauges.
GAUGES_EVERY: Final = 0.5
#: Seconds a ``/tokenize`` call may take before the estimate goes on without it.
TOKENIZE_TIMEOUT: Final = 5.0
_SOURCES: Final = ("fixed", "metrics", "latency")


def tokenize_url(base_url: str) -> str:
    """vLLM and SGLang serve ``/tokenize`` beside ``/v1``, not under it."""
    return base_url.rstrip("/").removesuffix("/v1") + "/tokenize"


class Pacing:
    def __init__(
        self,
        settings: Settings,
        router: Router,
        store: Store,
        *,
        owner: str,
        shared: bool,
    ) -> None:
        """``shared``: several workers share the store (PostgreSQL): budgets are the fleet's."""
        self.router = router
        self.scrapers: list[engine_metrics.Scraper] = []
        self.slots: list[Slot] = []
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        window = settings.testing.rate_limit_window_seconds or budgets.WINDOW
        known = {slot.backend.name: slot for slot in router.slots()}
        for conf in settings.backends:
            slot = known.get(conf.name)
            if slot is None:
                continue  # not one the router sends requests to
            self.slots.append(slot)
            if conf.concurrency == "adaptive":
                self._adapt(conf, slot)
            if conf.rpm or conf.tpm:
                slot.budget = budgets.Budget(
                    conf.name,
                    conf.rpm,
                    conf.tpm,
                    window=window,
                    store=store if shared else None,
                    owner=owner if shared else None,
                    tokenize=self._tokenizer(conf) if conf.tpm else None,
                )

    def _adapt(self, conf: BackendSettings, slot: Slot) -> None:
        limiter = AdaptiveLimit(
            conf.max_concurrency,
            conf.reserve,
            time.monotonic,
            scrape_interval=engine_metrics.INTERVAL,
        )
        slot.limiter = limiter
        url = engine_metrics.metrics_url(conf.base_url, conf.metrics_url)
        if url is not None:
            self.scrapers.append(
                engine_metrics.Scraper(
                    conf.name,
                    url,
                    limiter,
                    own=lambda: limiter.in_flight,
                    active=lambda: slot.in_flight > 0,
                )
            )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            )
        return self._session

    def _tokenizer(
        self, conf: BackendSettings
    ) -> Callable[[dict[str, Any]], Awaitable[int | None]]:
        url = tokenize_url(conf.base_url)
        headers = {"Content-Type": "application/json"}
        if key := conf.resolved_api_key():
            headers["Authorization"] = f"Bearer {key}"

        async def tokenize(payload: dict[str, Any]) -> int | None:
            # The payload names the model as the body sent to the backend does.
            timeout = aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT)
            try:
                async with self._client().post(
                    url, data=orjson.dumps(payload), headers=headers, timeout=timeout,
                    allow_redirects=False,
                ) as resp:  # fmt: skip
                    raw = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError) as exc:
                logger.info("backend %s: /tokenize gave no answer (%s)", conf.name, exc)
                return None
            count = _count(raw) if status == 200 else None
            if count is None:
                logger.info(
                    "backend %s: no token counts at %s (HTTP %d); estimating from text length",
                    conf.name,
                    url,
                    status,
                )
            return count

        return tokenize

    async def run(self) -> None:
        """Until ``stop()``: the scrapers, and the gauges."""
        session = self._client()
        tasks = [asyncio.create_task(s.run(session)) for s in self.scrapers]
        try:
            while not self._stopping.is_set():
                self._gauges()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), GAUGES_EVERY)
        finally:
            for scraper in self.scrapers:
                scraper.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _gauges(self) -> None:
        for slot in self.slots:
            name = slot.backend.name
            source = slot.limiter.source()
            for known in _SOURCES:
                metrics.LIMIT_SOURCE.labels(name, known).set(1 if known == source else 0)
            metrics.CONCURRENCY_LIMIT.labels(name).set(slot.capacity())
            if isinstance(slot.limiter, AdaptiveLimit):
                metrics.ENGINE_CAPACITY.labels(name).set(slot.limiter.capacity or 0)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """After the dispatcher drained: give budget slices back, close the HTTP session."""
        self.stop()
        for slot in self.slots:
            if slot.budget is not None:
                try:
                    await slot.budget.close()
                except Exception:  # the database may be gone: the slices then expire
                    logger.exception("could not give back the budget of %s", slot.backend.name)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _count(raw: bytes) -> int | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    count = body.get("count") if isinstance(body, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None
