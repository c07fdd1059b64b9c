"""The backend port: send one request body, get one reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lowtide import errors


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    request_id: str | None = None
    #: Seconds the backend asked us to wait (``Retry-After`` / ``retry-after-ms``), if any.
    retry_after: float | None = None


class Unreachable(errors.BackendError):
    """The backend gave no answer: connection refused or dropped, or a timeout."""

    def __init__(self, message: str, *, code: str = "upstream_unavailable") -> None:
        super().__init__(message, code=code)


class Backend(Protocol):
    name: str
    max_concurrency: int

    def model_name(self, model: str) -> str:
        """The name this backend knows ``model`` by."""

    async def send(self, path: str, body: bytes) -> Reply:
        """POST ``body`` to ``path`` (e.g. ``/chat/completions``); raise ``Unreachable``."""

    async def probe(self) -> str | None:
        """Ask the backend something cheap: None if it answered at all (any status), else
        why not (refused, reset, timed out)."""

    async def close(self) -> None: ...
