"""Who is calling: Bearer keys to accounts, and the per-account rate limits of each route class.

Keys come from two places: the config file's ``[[api_keys]]`` (kept in memory as SHA-256
digests; the clear keys are not kept past start-up) and the database (``lowtide keys create``,
stored only as digests). A key is looked up by its SHA-256 digest: no comparison ever runs
over the secret itself, so its timing cannot reveal it (how long a lookup takes depends on how
much of a digest matches, and a key whose digest matches a stored one in its first bytes is
no nearer to the key: that is what a cryptographic hash promises). The database is asked on
every request, one indexed read, so that a key revoked by ``lowtide keys revoke`` is refused
at once by every API process of a fleet.

SHA-256 rather than a slow password hash (bcrypt, scrypt, Argon2): those protect secrets that
people choose, which can be guessed. A key made by ``lowtide keys create`` is 256 random bits,
so a leaked digest cannot be reversed by guessing either way, and a fast digest keeps the
per-request lookup cheap. Keys written in the config file are chosen by operators: keep them
long and random too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request

from lowtide import errors
from lowtide.service.keys import digest
from lowtide.service.ratelimit import RateLimiter
from lowtide.settings import Settings
from lowtide.store import Store

DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    account: str
    #: An operator's key: may read every account's batches.
    admin: bool = False

    def read_scope(self) -> str | None:
        """The account whose batches this caller may read; None means all of them."""
        return None if self.admin else self.account


class Authenticator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self._callers = {digest(k.key): Caller(k.account, k.admin) for k in settings.api_keys}
        self._store = store
        #: The database held a key once: it always will (revoked keys stay), so keep the answer.
        self._stored_keys = False

    async def open(self) -> bool:
        """No keys, in the config or the database: every caller is the ``default`` account
        (the server then listens on loopback only). Once a key exists, keys are required."""
        if self._callers or self._stored_keys:
            return False
        self._stored_keys = await self._store.has_api_keys()
        return not self._stored_keys

    async def identify(self, authorization: str | None) -> Caller:
        if await self.open():
            return Caller(DEFAULT_ACCOUNT)
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.AuthenticationFailed(
                "You didn't provide an API key. Provide it in the Authorization header "
                "as 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        wanted = digest(key.strip())
        caller = self._callers.get(wanted)
        if caller is not None:
            return caller
        account = await self._store.find_api_key(wanted)
        if account is None:
            raise errors.AuthenticationFailed("Incorrect API key provided.")
        return Caller(account)


def limited(route_class: str) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller, once its ``route_class`` rate limit allows the call.

    Route classes: ``create``, ``retrieve``, ``list``, ``cancel``, ``upload``.
    """

    async def dependency(request: Request) -> Caller:
        app = request.app
        auth: Authenticator = app.state.auth
        caller = await auth.identify(request.headers.get("authorization"))
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
