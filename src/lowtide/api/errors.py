"""Every error over HTTP is the OpenAI envelope ``{"error": {message, type, param, code}}``.

This module is the one place that renders it: our own ``LowtideError``s, the framework's
404 / 405 / validation errors, and anything unexpected (a 500 that leaks no detail).
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from lowtide import errors
from lowtide.api.responses import JSON
from lowtide.domain import wire

logger = logging.getLogger(__name__)

_STATUS_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


def envelope(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSON:
    body = wire.error_json(message, type_, param, code)
    return JSON(body, status_code=status, headers=headers)


def render(exc: errors.LowtideError) -> JSON:
    headers = None
    if isinstance(exc, errors.RateLimited):
        headers = {**exc.headers, "Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, errors.AuthenticationFailed):
        headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, errors.Conflict):
        # The openai SDK retries 409s unless told not to; a conflict does not go away.
        headers = {"x-should-retry": "false"}
    return envelope(
        exc.status_code,
        exc.message,
        type_=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=headers,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method that some route serves on this path.

    Starlette's 405 names the methods of the first route that matched the path only, but
    ``GET /v1/files`` and ``POST /v1/files`` are two routes. Each method is tried on a fresh
    copy of the request's address, so the answer does not depend on how routers nest.
    """
    address = {
        "type": "http",
        "path": request.scope["path"],
        "root_path": request.scope.get("root_path", ""),
    }
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**address, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.LowtideError)
    async def lowtide_error(request: Request, exc: errors.LowtideError) -> JSON:
        if exc.status_code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        return render(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSON:
        message = {
            404: f"Unknown request URL: {request.method} {request.url.path}.",
            405: f"Method {request.method} is not allowed on {request.url.path}.",
        }.get(exc.status_code, str(exc.detail))
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return envelope(
            exc.status_code,
            message,
            type_=_STATUS_TYPES.get(exc.status_code, "invalid_request_error"),
            headers=headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSON:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = ".".join(loc) or None
        return envelope(
            400,
            f"Invalid request: {first.get('msg', 'bad input')}"
            + (f" ('{param}')." if param else "."),
            param=param,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSON:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return envelope(
            500, "The server had an error while processing your request.", type_="server_error"
        )
