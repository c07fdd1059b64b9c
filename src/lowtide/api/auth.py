"""Bearer keys to accounts.

Keys are kept as SHA-256 digests and looked up by digest, so the comparison never runs over
the secret itself, and the clear keys are not kept in memory past start-up.
"""

from __future__ import annotations

import hashlib

from fastapi import Request

from lowtide import errors
from lowtide.settings import Settings

DEFAULT_ACCOUNT = "default"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._accounts = {_digest(k.key): k.account for k in settings.api_keys}

    @property
    def open(self) -> bool:
        """No keys configured: every caller is the ``default`` account (loopback only)."""
        return not self._accounts

    def account_for(self, authorization: str | None) -> str:
        if self.open:
            return DEFAULT_ACCOUNT
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.AuthenticationFailed(
                "You didn't provide an API key. Provide it in the Authorization header "
                "as 'Bearer YOUR_KEY'.",
                code="missing_api_key",
            )
        account = self._accounts.get(_digest(key.strip()))
        if account is None:
            raise errors.AuthenticationFailed("Incorrect API key provided.")
        return account


async def account(request: Request) -> str:
    """FastAPI dependency: the account of the caller."""
    auth: Authenticator = request.app.state.auth
    return auth.account_for(request.headers.get("authorization"))
