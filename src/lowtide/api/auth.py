"""Who is calling: Bearer keys to accounts, and the per-account rate limits of each route class.

Keys are kept as SHA-256 digests and looked up by digest, so no comparison ever runs over the
secret itself (nothing to time), and the clear keys are not kept in memory past start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from lowtide import errors
from lowtide.service.ratelimit import RateLimiter
from lowtide.settings import Settings

DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    account: str
    #: An operator's key: may read every account's batches.
    admin: bool = False

    def read_scope(self) -> str | None:
        """The account whose batches this caller may read; None means all of them."""
        return None if self.admin else self.account


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._callers = {digest(k.key): Caller(k.account, k.admin) for k in settings.api_keys}

    @property
    def open(self) -> bool:
        """No keys configured: every caller is the ``default`` account (loopback only)."""
        return not self._callers

    def identify(self, authorization: str | None) -> Caller:
        if self.open:
            return Caller(DEFAULT_ACCOUNT)
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.AuthenticationFailed(
                "You didn't provide an API key. Provide it in the Authorization header "
                "as 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        caller = self._callers.get(digest(key.strip()))
        if caller is None:
            raise errors.AuthenticationFailed("Incorrect API key provided.")
        return caller


def limited(route_class: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller, once its ``route_class`` rate limit allows the call.

    Route classes: ``create``, ``retrieve``, ``list``, ``cancel``, ``upload``.
    """

    async def dependency(request: Request) -> Caller:
        app = request.app
        caller: Caller = app.state.auth.identify(request.headers.get("authorization"))
        settings: Settings = app.state.settings
        limit = getattr(settings.limits_for(caller.account), f"{route_class}_per_minute")
        limiter: RateLimiter = app.state.limiter
        decision = await limiter.hit(f"{caller.account}:{route_class}", limit)
        request.state.ratelimit_headers = decision.headers()
        if not decision.allowed:
            raise errors.RateLimited(
                f"Rate limit reached for {route_class} requests: {limit} per minute. "
                f"Try again in {decision.reset:.0f}s.",
                retry_after=decision.reset,
                headers=decision.headers(),
            )
        return caller

    return dependency
