"""The simulated engine's HTTP server: a thin asyncio shell around ``EngineCore``.

The model clock is the real clock times ``speed``. A request is stamped with the model time
of its arrival and queued; the stepping task computes a step once the real clock has reached
the step's start (so every request that arrived by then is in the queue), sleeps until the
step's end, then answers the requests that finished in it. A step is never shortened or
skipped because the process woke late: a late wake-up delays answers in real time but not in
model time, and ``behind_max_s`` in the stats says how far the shell ever fell behind (if it is
large, the machine was too busy for the chosen ``speed``).

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``POST /tokenize``, ``GET /metrics``, ``GET /health``; control routes (never counted):
``GET /_sim/stats[?records=1]``, ``POST /_sim/reset`` (``{"cache": true}`` also empties the KV
cache, only while idle), ``GET /_sim/config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from lowtide.testing.engine_sim import metrics, wire
from lowtide.testing.engine_sim.config import EngineConfig, require_loopback
from lowtide.testing.engine_sim.core import EngineCore, Seq
from lowtide.testing.engine_sim.limits import RollingBudget
from lowtide.testing.engine_sim.stats import Stats
from lowtide.testing.serving import Served, listen

logger = logging.getLogger(__name__)

TAG_HEADER: Final = "X-Sim-Client"  # a client's tag in the stats (``default`` without one)
_MAX_BODY: Final = 64 * 1024 * 1024
# lowtide with max_concurrency 256 opens that many connections at once; aiohttp's default
# listen backlog of 128 would drop SYNs, each retried only after a second.
_BACKLOG: Final = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


class SimEngine(Served):
    """The simulated engine in the current event loop: ``async with SimEngine(cfg) as eng``."""

    def __init__(
        self, config: EngineConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        require_loopback(host)
        self.config = config or EngineConfig()
        self.core = EngineCore(self.config)
        self._budget = RollingBudget(self.config.rpm, self.config.tpm)
        self._stats = Stats()
        self._host, self._requested_port, self._port = host, port, 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._t0 = time.monotonic()
        self._created = int(time.time())
        self._behind_max = 0.0
        self._runner: web.AppRunner | None = None
        self._stepper: asyncio.Task[None] | None = None

    # -- lifecycle

    async def start(self) -> str:
        app = web.Application(client_max_size=_MAX_BODY)
        routes: list[tuple[str, str, Handler]] = [
            ("POST", "/v1/chat/completions", self._chat),
            ("POST", "/v1/completions", self._completions),
            ("GET", "/v1/models", self._models),
            ("POST", "/tokenize", self._tokenize),
            ("GET", "/metrics", self._metrics),
            ("GET", "/health", self._health),
            ("GET", "/_sim/stats", self._stats_route),
            ("POST", "/_sim/reset", self._reset_route),
            ("GET", "/_sim/config", self._config_route),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, path, self._guarded(handler))
        # handler_cancellation: a request whose client went away is aborted, as vLLM does.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        self._port = await listen(self._runner, self._host, self._requested_port, _BACKLOG)
        self._t0 = time.monotonic()
        self._stepper = asyncio.create_task(self._step_forever(), name="engine-sim-steps")
        return self.url

    async def close(self) -> None:
        if self._stepper is not None:
            self._stepper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stepper
            self._stepper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    # -- the clock and the steps

    def model_now(self) -> float:
        return (time.monotonic() - self._t0) * self.config.speed

    def _real_delay(self, model_time: float) -> float:
        return model_time / self.config.speed - (time.monotonic() - self._t0)

    async def _step_forever(self) -> None:
        try:
            while True:
                at = self.core.next_step_at()
                if at is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if (delay := self._real_delay(at)) > 0:
                    await asyncio.sleep(delay)
                    continue
                self._behind_max = max(self._behind_max, self.model_now() - at)
                result = self.core.step()
                if (delay := self._real_delay(result.end)) > 0:
                    await asyncio.sleep(delay)
                for seq in result.finished:
                    self._stats.finished(seq)
                    waiter = self._waiters.pop(seq.rid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
        except Exception as exc:  # a bug in the model: fail the requests rather than hang them
            logger.exception("the simulated engine's step loop failed")
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(exc)
            raise

    # -- state for tests and benchmarks

    def stats(self, *, records: bool = False) -> dict[str, Any]:
        core, c = self.core, self.core.counters
        out: dict[str, Any] = {
            "model_time_s": round(self.model_now(), 6),
            "behind_max_s": round(self._behind_max, 6),
            "running": len(core.running),
            "waiting": len(core.waiting),
            "kv_cache_usage": round(core.pool.usage(), 6),
            "cached_blocks": core.pool.cached_blocks,
            "evicted_blocks": core.evicted_blocks,
            **dataclasses.asdict(c),
            "refused": sum(self._stats.refused.values()),
            "by_tag": self._stats.by_tag(),
            "config": self.config.to_dict(),
        }
        if records:
            out["records"] = self._stats.record_dicts()
        return out

    def reset(self, *, cache: bool = False) -> None:
        """Zero the stats and the budget's window; with ``cache``, empty the KV cache too."""
        self.core.reset(cache=cache)
        self._stats = Stats()
        self._budget.clear()
        self._behind_max = 0.0

    # -- routes

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except wire.HttpError as exc:
                if not request.path.startswith("/_sim/"):
                    self._stats.refuse(self._tag(request), exc.status)
                return _json(exc.body(), exc.status, exc.headers)

        return guarded

    @staticmethod
    def _tag(request: web.Request) -> str:
        return request.headers.get(TAG_HEADER, "default")[:64] or "default"

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        try:
            return orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise wire.HttpError(400, f"the request body is not valid JSON: {exc}") from None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        gen = wire.chat_request(await self._body(request), self.config)
        seq, headers = await self._run(gen, self._tag(request))
        return _json(wire.chat_answer(seq, self.config.model), headers=headers)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        gen = wire.completion_request(await self._body(request), self.config)
        seq, headers = await self._run(gen, self._tag(request))
        return _json(wire.completion_answer(seq, self.config.model), headers=headers)

    async def _run(self, gen: wire.Generation, tag: str) -> tuple[Seq, dict[str, str]]:
        """Charge the budget, queue the request, wait for its last token; the answer's
        headers."""
        now = self.model_now()
        headers: dict[str, str] = {}
        if self._budget.active:
            verdict = self._budget.try_admit(now, gen.budget_tokens)
            if not verdict.ok:
                raise wire.refused(verdict, self.config, gen.budget_tokens)
            headers = wire.budget_headers(verdict, self.config)
        # Stamps only grow, but two arrivals may read the same clock value: keep them ordered.
        if self.core.waiting:
            now = max(now, self.core.waiting[-1].arrival)
        seq = Seq.of(
            gen.tokens,
            gen.max_tokens,
            now,
            self.config.block_size,
            tag=tag,
            budget_tokens=gen.budget_tokens,
        )
        self.core.add(seq)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[seq.rid] = waiter
        self._wake.set()
        try:
            await waiter
        except asyncio.CancelledError:
            self._waiters.pop(seq.rid, None)
            self.core.abort(seq)
            raise
        headers["x-request-id"] = f"sim-{seq.rid}"
        return seq, headers

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return _json(wire.models_answer(self.config, self._created))

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        return _json(wire.tokenize(await self._body(request), self.config))

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = metrics.render(self.core, self.config.model)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def _stats_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.stats(records=request.query.get("records") in ("1", "true")))

    async def _reset_route(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        cache = isinstance(body, dict) and bool(body.get("cache"))
        try:
            self.reset(cache=cache)
        except RuntimeError as exc:
            raise wire.HttpError(409, str(exc)) from None
        return _json({"reset": True, "cache": cache})

    async def _config_route(self, request: web.Request) -> web.StreamResponse:
        return _json(self.config.to_dict())
