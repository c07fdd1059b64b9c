"""Reads an inference engine's own ``/metrics``: how many requests it runs and how many wait.

vLLM names them ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``; SGLang
``sglang:num_running_reqs`` and ``sglang:num_queue_reqs``. Samples are summed over their labels
(several models, or several engines behind one server, add up). A scrape is one small GET; the
body is cut down to the lines of those four names before it is parsed (vLLM's page holds
hundreds of histogram lines), then parsed once with ``prometheus_client``'s text parser.

``Scraper`` GETs the page every ``INTERVAL`` seconds while lowtide has requests for the backend
(``LEARNING_INTERVAL`` while the limiter is still finding the engine's capacity; an idle backend
is not polled), hands each reading to the backend's limiter, and backs off when the page cannot
be read: metrics that stop coming make the limiter fall back to latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Final

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from lowtide import metrics
from lowtide.engine.limits import EngineLoad, Limiter

logger = logging.getLogger(__name__)

#: (running, waiting) metric names, per engine.
NAMES: Final = (
    ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
)
_WANTED: Final = frozenset(name for pair in NAMES for name in pair)
#: Seconds between two scrapes while lowtide has requests in flight to the backend...
INTERVAL: Final = 0.1
#: ... and while the limiter is still finding the engine's capacity (climbing towards it: the
#: sooner a queue is seen, the shorter it is).
LEARNING_INTERVAL: Final = 0.025
#: Seconds between two looks at an idle backend (nothing is scraped then).
IDLE_POLL: Final = 0.2
#: After this many failures in a row, scrape only every ``FAILED_POLL`` seconds; after
#: ``FAILURES_BEFORE_GIVING_UP``, every ``GIVEN_UP_POLL`` (a server without the page, such as a
#: hosted API, is asked seldom; an engine that comes back is read again within a minute).
FAILURES_BEFORE_BACKOFF: Final = 3
FAILED_POLL: Final = 5.0
FAILURES_BEFORE_GIVING_UP: Final = 10
GIVEN_UP_POLL: Final = 60.0
#: A page larger than this is not an engine's metrics page.
MAX_BYTES: Final = 8 * 1024 * 1024


def metrics_url(base_url: str, configured: str | None) -> str | None:
    """The metrics page of a backend: ``configured`` if set (``""``: none), else
    ``base_url`` with its trailing ``/v1`` replaced by ``/metrics``."""
    if configured is not None:
        return configured or None
    base = base_url.rstrip("/")
    return base.removesuffix("/v1") + "/metrics"


def _wanted_lines(text: str) -> str:
    keep = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _WANTED:
            keep.append(line)
    return "\n".join(keep) + "\n"


def parse(text: str) -> EngineLoad | None:
    """The engine's load from its metrics page, or None if the page has neither vLLM's nor
    SGLang's counts. Raises ValueError on a page that is not Prometheus text."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(_wanted_lines(text)):
        for sample in family.samples:
            if sample.name in _WANTED and math.isfinite(sample.value):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    for running, waiting in NAMES:
        if running in totals and waiting in totals:
            return EngineLoad(int(totals[running]), int(totals[waiting]))
    return None


class Scraper:
    """Scrapes one backend's metrics page for its limiter (see the module docstring)."""

    def __init__(
        self,
        backend: str,
        url: str,
        limiter: Limiter,
        *,
        own: Callable[[], int],
        active: Callable[[], bool],
        interval: float = INTERVAL,
    ) -> None:
        self.backend, self.url, self.limiter = backend, url, limiter
        self.own, self.active, self.interval = own, active, interval
        self.failures = 0
        self._warned = False
        self._stopping = asyncio.Event()
        self._running = metrics.ENGINE_REQUESTS.labels(backend, "running")
        self._waiting = metrics.ENGINE_REQUESTS.labels(backend, "waiting")
        self._ok = metrics.ENGINE_SCRAPES.labels(backend, "ok")
        self._failed = metrics.ENGINE_SCRAPES.labels(backend, "failed")

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping.is_set():
            if not self.active():
                await self._sleep(IDLE_POLL)
                continue
            started = time.monotonic()
            await self.scrape_once(session)
            if self.failures >= FAILURES_BEFORE_GIVING_UP:
                wait = GIVEN_UP_POLL
            elif self.failures >= FAILURES_BEFORE_BACKOFF:
                wait = FAILED_POLL
            else:
                every = (
                    min(self.interval, LEARNING_INTERVAL)
                    if self.limiter.learning
                    else self.interval
                )
                wait = every - (time.monotonic() - started)
            await self._sleep(max(0.0, wait))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def scrape_once(self, session: aiohttp.ClientSession) -> EngineLoad | None:
        # The engine counted at some moment during the GET: lowtide's own count is taken as
        # the mean of before and after.
        before = self.own()
        problem, load = await self._read(session)
        if load is None:
            self._failed.inc()
            self.failures += 1
            self.limiter.unobserved()
            if not self._warned:
                self._warned = True
                logger.warning(
                    "backend %s: no engine metrics at %s (%s); its limit follows latency",
                    self.backend,
                    self.url,
                    problem,
                    extra={"action": "engine_metrics_missing", "backend": self.backend},
                )
            return None
        if self._warned and self.failures:
            logger.warning(
                "backend %s: engine metrics at %s read again",
                self.backend,
                self.url,
                extra={"action": "engine_metrics_back", "backend": self.backend},
            )
            self._warned = False
        self.failures = 0
        self._ok.inc()
        self._running.set(load.running)
        self._waiting.set(load.waiting)
        self.limiter.observe(load, round((before + self.own()) / 2))
        return load

    async def _read(self, session: aiohttp.ClientSession) -> tuple[str, EngineLoad | None]:
        timeout = aiohttp.ClientTimeout(total=max(1.0, self.interval * 10))
        try:
            async with session.get(self.url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    return f"HTTP {resp.status}", None
                if (resp.content_length or 0) > MAX_BYTES:
                    return "the page is too large", None
                raw = await resp.content.read(MAX_BYTES + 1)
        except TimeoutError:
            return "no answer in time", None
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}", None
        if len(raw) > MAX_BYTES:
            return "the page is too large", None
        try:
            load = parse(raw.decode("utf-8", errors="replace"))
        except ValueError as exc:
            return f"not Prometheus text: {exc}", None
        if load is None:
            return "neither vLLM's nor SGLang's request counts", None
        return "", load
