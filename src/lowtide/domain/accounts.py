"""Records of accounts' keys, idempotency keys and the retention sweep (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

#: What an idempotency key was used for: its scope inside the account.
FILE_KIND = "file"
BATCH_KIND = "batch"
#: How long an idempotency key is remembered (docs/api-compatibility.md, "Idempotency").
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key made by ``lowtide keys create``. The secret itself is never kept: the store
    holds its SHA-256 digest, and ``hint`` (its first characters) to tell keys apart."""

    id: str
    account: str
    hint: str
    created_at: int
    label: str | None = None
    revoked_at: int | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` to record with the object it created, in the same transaction."""

    account: str
    kind: str
    key: str
    #: SHA-256 (hex) of the request's parameters, canonicalised.
    fingerprint: str
    #: The first response, as JSON text: what a retry gets back.
    response: str
    created_at: int
    #: A key recorded before this time has lapsed: it is replaced, not replayed.
    stale_before: int


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A key already recorded: the parameters it was used with and the first response."""

    fingerprint: str
    response: str
    created_at: int


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one retention sweep removed."""

    expired_files: int = 0
    deleted_blobs: int = 0
    retired_batches: int = 0
    lapsed_keys: int = 0

    def __bool__(self) -> bool:
        return any((self.expired_files, self.deleted_blobs, self.retired_batches, self.lapsed_keys))
