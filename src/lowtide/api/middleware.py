"""Plain ASGI middlewares (no per-request buffering, so uploads still stream)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lowtide.api.errors import envelope

_READ_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class RejectBodyOnReads:
    """A GET, HEAD, DELETE or OPTIONS with a body is refused with 400: the body has no meaning
    for these routes, and accepting it silently would hide a client's mistake."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _READ_METHODS and _has_body(scope):
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
