"""Idempotent creates (docs/api-compatibility.md, "Idempotency"): the same ``Idempotency-Key``
with the same parameters answers the first response again for 24 hours; with other
parameters, 409.

A key is recorded in the same transaction as the object it created (``Store.create_file`` /
``create_batch``), so there is no window in which a key is taken but its object missing, or
the reverse, and nothing to clean up after a crash. The first response is stored with it, so
a retry gets exactly what the first call answered (same id, same ``created_at``), as the
HTTP convention has it, even if the object has changed or been deleted since.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import orjson

from lowtide import errors
from lowtide.domain.accounts import (
    IDEMPOTENCY_TTL_SECONDS,
    IdempotencyClaim,
    IdempotencyRecord,
)
from lowtide.domain.records import JsonDict

TTL_SECONDS = IDEMPOTENCY_TTL_SECONDS
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"


def check_key(key: object, param: str = HEADER) -> str | None:
    """The key as given, or a 400 if it is empty, too long or not printable ASCII."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise errors.InvalidType(f"Invalid type for '{param}': expected a string.", param=param)
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise errors.InvalidValue(
            f"'{param}' must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.", param=param
        )
    return key


def fingerprint(params: dict[str, Any]) -> str:
    """SHA-256 of the parameters as canonical JSON: keys sorted at every depth, so that two
    requests differing only in the order of their metadata are the same request."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One idempotent create under way: its key, and what the store must record."""

    account: str
    kind: str
    key: str
    fingerprint: str
    now: int

    @classmethod
    def start(cls, account: str, kind: str, key: str, params: dict[str, Any]) -> Attempt:
        return cls(account, kind, key, fingerprint(params), int(time.time()))

    @property
    def since(self) -> int:
        """Keys recorded before this have lapsed."""
        return self.now - TTL_SECONDS

    def claim(self, response: JsonDict) -> IdempotencyClaim:
        return IdempotencyClaim(
            account=self.account,
            kind=self.kind,
            key=self.key,
            fingerprint=self.fingerprint,
            response=orjson.dumps(response).decode(),
            created_at=self.now,
            stale_before=self.since,
        )

    def replay(self, held: IdempotencyRecord) -> JsonDict:
        """The first response if the parameters are the same; a 409 if they are not."""
        if held.fingerprint != self.fingerprint:
            raise errors.Conflict(
                f"Idempotency key conflict: the key '{self.key}' was already used with "
                "different parameters in the last 24 hours. Use a new key for a new request.",
                param=HEADER,
                code="idempotency_key_conflict",
            )
        first: JsonDict = orjson.loads(held.response)
        return first
