"""The fake's HTTP replies: answers, OpenAI-style errors and the faults' broken replies.

Each reply counts itself in the ``Stats`` it is given (the server swaps its stats on reset,
so it hands the current ones in).
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Final

import orjson
from aiohttp import web

from lowtide.testing.upstream.bodies import hex_id
from lowtide.testing.upstream.config import UpstreamConfig
from lowtide.testing.upstream.faults import has
from lowtide.testing.upstream.routes import Route
from lowtide.testing.upstream.stats import Stats

JSON: Final = "application/json"

_SERVER_ERROR_TEXT: Final = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}
_HTML_GARBAGE: Final = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body>"


def _error_body(message: str, err_type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def respond(
    stats: Stats,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = JSON,
) -> web.Response:
    stats.by_status[status] += 1
    all_headers = {"Content-Type": content_type, "x-request-id": "req_" + hex_id()}
    if headers:
        all_headers.update(headers)
    return web.Response(body=body, status=status, headers=all_headers)


def error(
    stats: Stats,
    status: int,
    message: str,
    err_type: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return respond(stats, status, _error_body(message, err_type, param, code), headers)


def ok(stats: Stats, payload: dict[str, Any]) -> web.Response:
    stats.ok += 1
    return respond(stats, 200, orjson.dumps(payload))


def server_error(stats: Stats, status: int = 500) -> web.Response:
    return error(stats, status, _SERVER_ERROR_TEXT[status], "server_error", None, None)


def unauthorized(stats: Stats) -> web.Response:
    stats.unauthorized += 1
    return error(
        stats, 401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
    )


def rate_limited(stats: Stats, cfg: UpstreamConfig) -> web.Response:
    """A 429 announcing ``cfg.retry_after`` (the caller records the pause it starts)."""
    stats.rate_limited += 1
    seconds = math.ceil(cfg.retry_after)
    headers = {
        "Retry-After": str(seconds),
        "retry-after-ms": str(round(cfg.retry_after * 1000)),
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{cfg.retry_after:g}s",
    }
    return error(
        stats,
        429,
        f"Rate limit reached for requests. Please try again in {cfg.retry_after:g}s.",
        "requests",
        None,
        "rate_limit_exceeded",
        headers,
    )


def injected_error(stats: Stats, rng: random.Random, cfg: UpstreamConfig) -> web.Response:
    stats.errors_injected += 1
    status = rng.choice(cfg.error_statuses)
    message = _SERVER_ERROR_TEXT.get(status, f"Injected error {status}.")
    err_type = "server_error" if status >= 500 else "invalid_request_error"
    return error(stats, status, message, err_type, None, None)


def garbage(stats: Stats, rng: random.Random, payload: dict[str, Any]) -> web.Response:
    stats.garbage += 1
    if rng.random() < 0.5:
        whole = orjson.dumps(payload)
        return respond(stats, 200, whole[: len(whole) // 2])
    return respond(stats, 200, _HTML_GARBAGE, content_type="text/html")


def drop(stats: Stats, request: web.BaseRequest) -> web.Response:
    stats.dropped += 1
    transport = request.transport
    if transport is not None:
        # abort, not close: the client sees a reset, as from a crashed backend.
        transport.abort()
    # Nothing can be written any more; aiohttp quietly discards this response.
    return web.Response(status=500)


def down(stats: Stats, request: web.BaseRequest, cfg: UpstreamConfig) -> web.Response:
    stats.down_rejected += 1
    if cfg.down_mode == "503":
        return server_error(stats, 503)
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=503)


def not_found(stats: Stats, request: web.BaseRequest, route: Route | None) -> web.Response:
    stats.bad_requests += 1
    if route is not None:
        return error(
            stats,
            405,
            f"Method {request.method} not allowed.",
            "invalid_request_error",
            None,
            "method_not_allowed",
        )
    return error(
        stats,
        404,
        f"Invalid URL ({request.method} {request.path})",
        "invalid_request_error",
        None,
        "unknown_url",
    )


def model_list(cfg: UpstreamConfig) -> web.Response:
    created = int(time.time())
    data = [
        {"id": model, "object": "model", "created": created, "owned_by": "lowtide-fake"}
        for model in cfg.models
    ]
    headers = {"x-request-id": "req_" + hex_id()}
    return web.Response(
        body=orjson.dumps({"object": "list", "data": data}), content_type=JSON, headers=headers
    )


def bad_body(stats: Stats, body: object, route: Route, cfg: UpstreamConfig) -> web.Response | None:
    """The 400 (or 404) a real server gives this body, or None when it is acceptable."""
    if not isinstance(body, dict):
        return error(
            stats,
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
            None,
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(
            stats,
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            "model",
            None,
        )
    if route.required not in body:
        return error(
            stats,
            400,
            f"Missing required parameter: '{route.required}'.",
            "invalid_request_error",
            route.required,
            "missing_required_parameter",
        )
    if cfg.reject_unknown_models and model not in cfg.models:
        return error(
            stats,
            404,
            f"The model `{model}` does not exist.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    return None


def marked_failure(
    stats: Stats, route: Route, key: str, cfg: UpstreamConfig, failed_once: set[str]
) -> web.Response | None:
    """The error a line's marker asks for (``FAIL400``, ``FAIL500ONCE``), if any."""
    if has(key, cfg.fail_contains):
        stats.fail_marker += 1
        return error(
            stats,
            400,
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            route.required,
            "context_length_exceeded",
        )
    if has(key, cfg.fail_once_contains) and key not in failed_once:
        failed_once.add(key)
        stats.fail_once += 1
        return server_error(stats)
    return None


def control_json(status: int, payload: object) -> web.Response:
    """A control route's answer: never counted in the stats."""
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON)
