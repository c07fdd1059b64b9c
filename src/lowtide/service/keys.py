"""API keys kept in the database (``lowtide keys``): made, listed and revoked.

A key is ``sk-lt-`` and 256 random bits (``secrets.token_urlsafe(32)``). The store keeps only
its SHA-256 digest and a short hint; the secret is shown once, to whoever made it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from lowtide import errors
from lowtide.domain.accounts import ApiKeyRecord
from lowtide.store import Store

PREFIX = "sk-lt-"
#: Characters of the random part shown in listings: enough to tell keys apart, and at
#: 6 bits each far too few to help guess the other 250 bits.
HINT_CHARS = 4
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9_.@:\-]{1,64}$")
_KEY_ID_RE = re.compile(r"^key_[0-9a-f]{16}$")


def digest(key: str) -> bytes:
    """What is stored and looked up instead of the key."""
    return hashlib.sha256(key.encode()).digest()


class KeyService:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, account: str, label: str | None) -> tuple[str, ApiKeyRecord]:
        """A new key of ``account``: the secret (to show once) and its record."""
        if not _ACCOUNT_RE.match(account):
            raise errors.InvalidValue(
                "An account name is 1 to 64 letters, digits or any of _ . @ : -", param="account"
            )
        if label is not None and not (label.isprintable() and len(label) <= 200):
            raise errors.InvalidValue("A label is at most 200 printable characters.")
        secret = PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            account=account,
            hint=secret[: len(PREFIX) + HINT_CHARS] + "...",
            created_at=int(time.time()),
            label=label,
        )
        await self.store.create_api_key(record, digest(secret))
        return secret, record

    async def list(self, account: str | None) -> list[ApiKeyRecord]:
        return await self.store.list_api_keys(account)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        record = None
        if _KEY_ID_RE.match(key_id):
            record = await self.store.revoke_api_key(key_id, int(time.time()))
        if record is None:
            raise errors.NotFound(f"No API key {key_id!r} (see `lowtide keys list`).")
        return record
