"""A hosted Batch API as an upstream (``kind = "batch"``): OpenAI's, Model Studio's, or another
lowtide. The official ``openai`` SDK speaks the Files and Batches routes of all three; this
adapter adds what offload needs on top: no retries of its own (the offloader decides what to
do again, after recording it), one error type per kind of trouble, and the searches that find
an upstream object whose creation's answer was lost (docs/offload.md, "Exactly once").

- ``Unreachable``: no answer (refused, reset, timed out): the call may or may not have taken
  effect upstream.
- ``Refused``: the upstream answered with an error status; ``retry_after`` when it said when
  to come back (429, 503).
- ``Gone``: the object is not there (404): a file the upstream lost or deleted.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from lowtide import errors
from lowtide.backends.base import Unreachable
from lowtide.settings import BackendSettings

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The metadata keys that carry a chunk's identity on its upstream batch; Model Studio's
#: console shows ``ds_name``, which carries it too (``lowtide <chunk id>``).
CHUNK_KEY = "lowtide_chunk"
BATCH_KEY = "lowtide_batch"
NAME_KEY = "ds_name"
#: Upstream objects created this long before the chunk's own record are still looked at when
#: searching (clocks of two machines differ).
CLOCK_SLACK = 300.0
#: Most objects one search reads (pages of ``PAGE``): far more than are made in a window.
SEARCH_LIMIT = 20_000
PAGE = 100


class Refused(errors.BackendError):
    """The upstream answered with an error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}", code=f"http_{status}")
        self.status = status
        self.retry_after = retry_after


class Gone(Refused):
    """404: the object is not (or no longer) there."""


@dataclass(frozen=True, slots=True)
class UpstreamBatch:
    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    #: What the upstream said went wrong with the batch as a whole (a failed validation).
    errors: str | None = None
    created_at: float = 0.0


class BatchApi:
    """One ``[[backends]]`` entry of kind ``batch``."""

    def __init__(self, settings: BackendSettings) -> None:
        # Imported here, not at the top: the SDK's import is about 0.4 s of CPU, which every
        # server and worker would pay at start whether or not it has a batch backend.
        import openai

        self.name = settings.name
        key = settings.resolved_api_key()
        if key is None and settings.api_key_env:
            logger.warning(
                "batch backend %s: the environment variable %s is not set; calls will be "
                "refused until it is",
                settings.name,
                settings.api_key_env,
            )
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url.rstrip("/"),
            api_key=key or "none",
            max_retries=0,  # the offloader retries, after recording what it tries
            timeout=settings.timeout,
        )

    async def close(self) -> None:
        await self._client.close()

    async def upload(self, filename: str, data: bytes | BinaryIO) -> str:
        """Upload an input file (purpose ``batch``), its bytes or a file read from its
        start; its id."""
        made = await _call(
            lambda: self._client.files.create(
                file=(filename, data, "application/jsonl"), purpose="batch"
            )
        )
        return made.id

    async def find_file(self, filename: str, since: float) -> str | None:
        """The id of an input file named ``filename`` uploaded after ``since`` (an upload
        whose answer was lost), if the upstream lists one."""
        found = await self.find_files(filename, since, first=True)
        return found[0] if found else None

    async def find_files(self, filename: str, since: float, *, first: bool = False) -> list[str]:
        """The ids of every input file named ``filename`` uploaded after ``since`` (newest
        first; ``first``: stop at the first)."""

        async def search() -> list[str]:
            matches: list[str] = []
            seen = 0
            page: list[Any] = []
            async for found in self._client.files.list(purpose="batch", limit=PAGE):
                if found.filename == filename:
                    matches.append(found.id)
                    if first:
                        break
                page.append(found)
                seen += 1
                if _old_page(page, since) or seen >= SEARCH_LIMIT:
                    break
                if len(page) == PAGE:
                    page = []
            return matches

        return await _call(search)

    async def create(
        self, file_id: str, endpoint: str, window: str, chunk_id: str, batch_id: str
    ) -> UpstreamBatch:
        """Create the upstream batch of a chunk: its identity in ``metadata`` and as the
        ``Idempotency-Key`` (which lowtide honours: a second create answers the first batch)."""
        made = await _call(
            lambda: self._client.batches.create(
                input_file_id=file_id,
                endpoint=cast(Any, endpoint),
                completion_window=cast(Any, window),
                metadata={CHUNK_KEY: chunk_id, BATCH_KEY: batch_id, NAME_KEY: _name(chunk_id)},
                extra_headers={"Idempotency-Key": chunk_id},
            )
        )
        return _batch(made)

    async def find_batch(self, chunk_id: str, since: float) -> UpstreamBatch | None:
        """The upstream batch that carries ``chunk_id`` in its metadata, created after
        ``since``, if the upstream lists one (newest first, as OpenAI, Model Studio and
        lowtide list them)."""

        async def search() -> UpstreamBatch | None:
            seen = 0
            page: list[Any] = []
            async for found in self._client.batches.list(limit=PAGE):
                if _carries(found.metadata or {}, chunk_id):
                    return _batch(found)
                page.append(found)
                seen += 1
                if _old_page(page, since) or seen >= SEARCH_LIMIT:
                    return None
                if len(page) == PAGE:
                    page = []
            return None

        return await _call(search)

    async def get(self, upstream_id: str) -> UpstreamBatch:
        return _batch(await _call(lambda: self._client.batches.retrieve(upstream_id)))

    async def cancel(self, upstream_id: str) -> UpstreamBatch:
        """Ask the upstream to cancel; a batch that already ended is answered as it is."""
        try:
            return _batch(await _call(lambda: self._client.batches.cancel(upstream_id)))
        except Refused as exc:
            if exc.status != 409:
                raise
            return await self.get(upstream_id)

    async def content(self, file_id: str) -> bytes:
        """The bytes of an output or error file (``Gone`` if the upstream lost it)."""
        found = await _call(lambda: self._client.files.content(file_id))
        return found.content

    async def delete(self, file_id: str) -> None:
        """Delete a file; one that is already gone is fine."""
        with contextlib.suppress(Gone):
            await _call(lambda: self._client.files.delete(file_id))


def _name(chunk_id: str) -> str:
    return f"lowtide {chunk_id}"


def _carries(metadata: dict[str, str], chunk_id: str) -> bool:
    return metadata.get(CHUNK_KEY) == chunk_id or metadata.get(NAME_KEY) == _name(chunk_id)


def _old_page(page: list[Any], since: float) -> bool:
    """A full page of objects created before ``since`` (less the clock slack): listed newest
    first, nothing further can be newer."""
    return len(page) == PAGE and all(item.created_at < since - CLOCK_SLACK for item in page)


def _batch(found: Any) -> UpstreamBatch:
    problems = getattr(found, "errors", None)
    messages = [d.message for d in (problems.data or [])] if problems is not None else []
    return UpstreamBatch(
        id=found.id,
        status=found.status,
        output_file_id=found.output_file_id,
        error_file_id=found.error_file_id,
        errors="; ".join(m for m in messages if m)[:1000] or None,
        created_at=float(found.created_at or 0),
    )


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    """``fn()``, its errors turned into ``Unreachable``, ``Refused`` or ``Gone``."""
    import openai  # loaded by BatchApi() already: a lookup in sys.modules

    try:
        return await fn()
    except openai.APITimeoutError as exc:
        raise Unreachable(f"no answer in time: {exc}", code="upstream_timeout") from exc
    except openai.APIConnectionError as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
    except openai.APIStatusError as exc:
        message = _message(exc)
        if exc.status_code == 404:
            raise Gone(404, message) from exc
        raise Refused(exc.status_code, message, _retry_after(exc.response.headers)) from exc


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:500]
    return str(exc.message)[:500]


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None
