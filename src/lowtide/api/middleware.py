"""Plain ASGI middlewares (no per-request buffering, so uploads still stream)."""

from __future__ import annotations

import sys
from collections.abc import Collection

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lowtide import errors
from lowtide.api.errors import envelope, render

_READ_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
#: Bytes of body a request other than an upload may carry (a batch create is a few hundred).
MAX_BODY = 1 << 20


class LimitBodies:
    """Every request body is bounded: ``limit`` bytes, except ``POST`` to the ``uploads`` paths,
    whose route bounds the file by ``limits.max_file_bytes`` as it streams it.

    A declared ``Content-Length`` over the limit is answered 413 before a byte is read. A body
    sent without one (chunked) is counted as the route reads it, and the read that passes the
    limit raises the same 413, so no route can be made to buffer more.
    """

    def __init__(self, app: ASGIApp, uploads: Collection[str] = (), limit: int = MAX_BODY) -> None:
        self.app, self.uploads, self.limit = app, frozenset(uploads), limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST" and scope["path"] in self.uploads):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await render(self._too_large())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> errors.PayloadTooLarge:
        return errors.PayloadTooLarge(
            f"The request body is too large: at most {self.limit} bytes.", code="body_too_large"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.strip()
            # A malformed length is the server's (uvicorn's) to refuse, not a size to judge.
            return int(text) if text.isdigit() else None
    return None


class RejectBodyOnReads:
    """A GET, HEAD, DELETE or OPTIONS with a body is refused with 400: the body has no meaning
    for these routes, and accepting it silently would hide a client's mistake.

    Only a request that some route serves is refused here: for any other, the router's own
    answer (404, or 405 with ``Allow``) says more about the mistake than the body does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _READ_METHODS
            and _has_body(scope)
            and _routed(scope)
        ):
            response = envelope(400, f"A {scope['method']} request must not carry a body.")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
        if name == b"transfer-encoding":
            return True
    return False


def _routed(scope: Scope) -> bool:
    router = getattr(scope.get("app"), "router", None)
    if router is None:  # outside a Starlette app: nothing to ask, so refuse as a read
        return True
    # A copy of the address only: matching must leave the request's own scope untouched.
    address = {key: scope.get(key, "") for key in ("type", "path", "root_path", "method")}
    return any(route.matches(address)[0] == Match.FULL for route in router.routes)


class RateLimitHeaders:
    """Adds the ``x-ratelimit-*`` headers to every rate-limited answer.

    The rate-limit dependency (``lowtide.api.auth.limited``) leaves them on the request state;
    routes return their own responses, so the headers are added on the way out, here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get("state", {}).get("ratelimit_headers")
                if extra:
                    headers = list(message.get("headers", []))
                    seen = {name.lower() for name, _ in headers}
                    for name, value in extra.items():
                        if name.encode() not in seen:
                            headers.append((name.encode(), value.encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ApiPrecedence:
    """While the API answers a request, the engine's thread (same process, same GIL) gives the
    GIL up every ``interval`` seconds instead of every switch interval, so that the request
    waits less each time it needs the GIL back; once no request is in flight, the interval
    set before is restored. Dispatch pays the shorter interval only during API calls.
    """

    def __init__(self, app: ASGIApp, interval: float) -> None:
        self.app, self.interval = app, interval
        self._in_flight = 0
        self._saved = sys.getswitchinterval()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._in_flight == 0:
            self._saved = sys.getswitchinterval()
            sys.setswitchinterval(self.interval)
        self._in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                sys.setswitchinterval(self._saved)
