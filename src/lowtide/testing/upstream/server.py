"""The fake upstream's aiohttp server, run inside the current event loop.

Latency is counted from the request's arrival (when aiohttp has parsed its headers; a batch
line's body comes in the same packets), not from when the handler gets round to it: an answer
with ``latency=L`` is sent L seconds after the request arrived, as a real backend with that
latency would send it, however long this server's own loop took to parse the request and reach
the handler. A server too busy to keep up answers as soon as it can. ``late_mean_ms`` and
``late_max_ms`` in the stats say how long after its due time a delayed answer's handler woke up
to send it (the loop's timers may also fire up to a millisecond early: negative lateness).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from lowtide.testing.serving import Served, listen
from lowtide.testing.upstream import replies
from lowtide.testing.upstream.config import UpstreamConfig, require_loopback, with_windows
from lowtide.testing.upstream.faults import Dice, Fault, Pauses, has
from lowtide.testing.upstream.routes import MODELS_PATH, ROUTES, Route, answer
from lowtide.testing.upstream.stats import Stats

# Batch lines can carry long contexts or many embedding inputs; aiohttp's default is 1 MiB.
_MAX_BODY: Final = 64 * 1024 * 1024
# aiohttp's default listen backlog is 128: a client that opens a few hundred connections at once
# (lowtide with max_concurrency 256) overflows it, and each dropped SYN is retried after 1 s.
_BACKLOG: Final = 1024
# Where _make_request stamps the request's arrival (time.monotonic()).
_ARRIVED: Final = web.RequestKey("lowtide_fake_arrived", float)


class FakeUpstream(Served):
    """The fake server, run inside the current event loop (``async with``)."""

    def __init__(
        self, config: UpstreamConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        require_loopback(host)
        self._host = host
        self._requested_port = port
        self._port = 0
        self._config = config or UpstreamConfig()
        self._dice = Dice(self._config)
        self._auth: str | None = None
        self._stats = Stats()
        self._failed_once: set[str] = set()
        self._pauses = Pauses()
        #: The last ``record_bodies`` request bodies, oldest first (GET /_fake/bodies).
        self._bodies: deque[dict[str, Any]] = deque(maxlen=0)
        self._started = time.monotonic()
        self._runner: web.ServerRunner | None = None
        self._server: web.Server | None = None

    # -- lifecycle

    async def start(self) -> str:
        everything = [f.name for f in dataclasses.fields(UpstreamConfig)]
        self._apply(with_windows(self._config, self._started_windows(), time.time()), everything)
        # handler_cancellation: a request whose client gave up stops counting as in flight.
        self._server = web.Server(
            self._handle,
            request_factory=self._make_request,
            handler_cancellation=True,
            access_log=None,
        )
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0)
        self._port = await listen(self._runner, self._host, self._requested_port, _BACKLOG)
        self._started = time.monotonic()
        return self.url

    def _started_windows(self) -> list[str]:
        # A window already given as an absolute time is kept; a duration starts now.
        cfg = self._config
        return [
            name
            for name, until, seconds in (
                ("storm_seconds", cfg.storm_until, cfg.storm_seconds),
                ("down_seconds", cfg.down_until, cfg.down_seconds),
            )
            if seconds > 0 and until == 0
        ]

    async def close(self) -> None:
        if self._runner is None:
            return
        # Hung requests would otherwise hold shutdown for shutdown_timeout; cut them now.
        if self._server is not None:
            for connection in self._server.connections:
                connection.force_close()
        await self._runner.cleanup()
        self._runner = None
        self._server = None

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # Called as soon as the headers are parsed, before the handler task has even started:
        # the earliest moment this process can know the request is there.
        arrived = time.monotonic()
        request = web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=_MAX_BODY,
        )
        request[_ARRIVED] = arrived
        return request

    # -- public state

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def config(self) -> UpstreamConfig:
        return self._config

    def configure(
        self, changes: Mapping[str, object] | None = None, **more: object
    ) -> UpstreamConfig:
        """Change some config fields now (like POST /_fake/config); ValueError if bad.

        ``storm_seconds`` / ``down_seconds`` start their window at this call; 0 ends it.
        """
        merged = {**(changes or {}), **more}
        new = with_windows(self._config.updated(merged), list(merged), time.time())
        self._apply(new, list(merged))
        return new

    def _apply(self, config: UpstreamConfig, changed: Sequence[str]) -> None:
        self._config = config
        self._dice.configure(config, reseed="seed" in changed)
        self._auth = f"Bearer {config.api_key}" if config.api_key else None
        if self._bodies.maxlen != config.record_bodies:
            self._bodies = deque(self._bodies, maxlen=config.record_bodies)

    def reset(self) -> None:
        """Zero the stats and forget fail-once lines and announced pauses (not the config)."""
        in_flight = self._stats.in_flight
        self._stats = Stats(in_flight=in_flight, max_concurrency_seen=in_flight)
        self._failed_once.clear()
        self._pauses.clear()
        self._bodies.clear()
        self._dice.configure(self._config, reseed=True)

    def stats(self, *, per_key: bool = False) -> dict[str, Any]:
        """What GET /_fake/stats answers: counters, by_route, by_status, state and config.

        ``early_requests`` counts requests that arrived while any Retry-After we sent was in
        force; ``early_same_key`` only those whose own line had been told to wait.
        """
        out = self._stats.counters()
        now, wall, cfg = time.monotonic(), time.time(), self._config
        out["storm_active"] = cfg.storm_until > wall
        out["down_active"] = cfg.down_until > wall
        out["pause_remaining_s"] = round(self._pauses.remaining(now), 3)
        out["uptime_s"] = round(now - self._started, 3)
        out["config"] = cfg.to_dict()
        if per_key:
            out["per_key"] = dict(self._stats.per_key)
        return out

    def bodies(self) -> list[dict[str, Any]]:
        """The last ``record_bodies`` request bodies received, oldest first (as parsed)."""
        return list(self._bodies)

    def count_for(self, key: str) -> int:
        """How many requests carried this custom key (last user message / embedding input)."""
        return self._stats.per_key.get(key, 0)

    # -- request handling

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/"):
            return await self._control(request)
        if path == MODELS_PATH and request.method == "GET":
            return self._list_models(request)
        stats = self._stats
        stats.requests += 1
        stats.by_route[path] += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_concurrency_seen:
            stats.max_concurrency_seen = stats.in_flight
        try:
            return await self._serve(request, path)
        except asyncio.CancelledError:
            self._stats.client_disconnects += 1
            raise
        finally:
            # self._stats, not stats: reset() may have swapped the object meanwhile.
            self._stats.in_flight -= 1

    def _list_models(self, request: web.BaseRequest) -> web.StreamResponse:
        """A health probe: answered like any listing, but for an outage (a server that is
        down answers nothing at all), and counted apart (``model_listings``)."""
        cfg = self._config
        self._stats.model_listings += 1
        if cfg.down_until > time.time() and cfg.down_mode == "close":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if cfg.down_until > time.time():
            return web.json_response({"error": {"message": "down"}}, status=503)
        return replies.model_list(cfg)

    async def _serve(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        now, wall, cfg = request[_ARRIVED], time.time(), self._config
        self._pauses.note_arrival(now, cfg.early_grace_ms, self._stats)
        route = ROUTES.get(path)
        if route is None or request.method != route.method:
            return replies.not_found(self._stats, request, route)
        if cfg.down_until > wall:
            return replies.down(self._stats, request, cfg)
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            return replies.unauthorized(self._stats)
        body = await self._read_body(request, route, cfg)
        if isinstance(body, web.Response):
            return body
        key = route.key(body)
        self._pauses.note_key(key, now, self._stats)
        if cfg.storm_until > wall:
            self._stats.storm_rejected += 1
            return self._rate_limited(key, now, cfg)
        fault = self._dice.fault()
        if fault is Fault.RATE_LIMIT:
            return self._rate_limited(key, now, cfg)
        await self._delay(key, cfg, now)
        return await self._finish(request, route, body, key, fault)

    async def _read_body(
        self, request: web.BaseRequest, route: Route, cfg: UpstreamConfig
    ) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        problem = replies.bad_body(self._stats, body, route, cfg)
        if problem is not None:
            self._stats.bad_requests += 1
            return problem
        assert isinstance(body, dict)
        if cfg.record_bodies:
            self._bodies.append(body)
        return body

    def _rate_limited(self, key: str, now: float, cfg: UpstreamConfig) -> web.Response:
        self._pauses.announce(key, now, cfg.retry_after)
        return replies.rate_limited(self._stats, cfg)

    async def _delay(self, key: str, cfg: UpstreamConfig, arrived: float) -> None:
        delay = self._dice.delay(key, cfg)
        if delay <= 0:
            return
        # Due `delay` after arrival: the time spent parsing and queueing is part of it.
        due = arrived + delay
        left = due - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        self._stats.note_late(time.monotonic() - due)

    async def _finish(
        self,
        request: web.BaseRequest,
        route: Route,
        body: dict[str, Any],
        key: str,
        fault: Fault,
    ) -> web.StreamResponse:
        cfg, stats = self._config, self._stats
        if fault is Fault.DROP or has(key, cfg.drop_contains):
            return replies.drop(stats, request)
        if fault is Fault.HANG or has(key, cfg.hang_contains):
            stats.hung += 1
            await asyncio.sleep(cfg.hang_seconds)
            return replies.drop(self._stats, request)
        if fault is Fault.ERROR:
            return replies.injected_error(stats, self._dice.rng, cfg)
        marked = replies.marked_failure(stats, route, key, cfg, self._failed_once)
        if marked is not None:
            return marked
        payload = route.build(body, answer(route, body, key, cfg))
        if fault is Fault.GARBAGE:
            return replies.garbage(stats, self._dice.rng, payload)
        return replies.ok(stats, payload)

    # -- control routes

    async def _control(self, request: web.BaseRequest) -> web.Response:
        route = (request.method, request.path)
        if route == ("GET", "/_fake/stats"):
            per_key = request.query.get("per_key", "") in ("1", "true", "yes")
            return replies.control_json(200, self.stats(per_key=per_key))
        if route == ("GET", "/_fake/bodies"):
            return replies.control_json(200, {"bodies": self.bodies()})
        if route == ("GET", "/_fake/config"):
            return replies.control_json(200, {"config": self._config.to_dict()})
        if route == ("POST", "/_fake/config"):
            return await self._control_config(request)
        if route == ("POST", "/_fake/reset"):
            self.reset()
            return replies.control_json(200, {"ok": True})
        return replies.control_json(
            404, {"error": f"no control route {request.method} {request.path}"}
        )

    async def _control_config(self, request: web.BaseRequest) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of config fields")
            config = self.configure(changes)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return replies.control_json(400, {"error": str(exc)})
        return replies.control_json(200, {"config": config.to_dict()})
