"""Any OpenAI-compatible HTTP server: vLLM, SGLang, Ollama, llama.cpp, DashScope, OpenAI.

aiohttp rather than httpx on this hot path: about 62 µs of CPU per request at concurrency 64
against httpx's 900 µs, measured on this kind of machine.
"""

from __future__ import annotations

import asyncio
import email.utils
import time

import aiohttp
from multidict import CIMultiDictProxy

from lowtide.backends.base import Reply, Unreachable
from lowtide.settings import BackendSettings


class OpenAIHTTPBackend:
    def __init__(self, settings: BackendSettings) -> None:
        self.name = settings.name
        self.max_concurrency = settings.max_concurrency
        self._base = settings.base_url.rstrip("/")
        self._aliases = dict(settings.model_aliases)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self._headers = {"Content-Type": "application/json"}
        if key := settings.resolved_api_key():
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def model_name(self, model: str) -> str:
        return self._aliases.get(model, model)

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily so that it binds to the running event loop.
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=self._headers
            )
        return self._session

    async def send(self, path: str, body: bytes) -> Reply:
        url = self._base + path
        try:
            # A redirect would carry the request (and our key) to a host nobody configured.
            async with self._client().post(url, data=body, allow_redirects=False) as resp:
                data = await _read_capped(resp, self.name)
                return Reply(
                    status=resp.status,
                    body=data,
                    request_id=resp.headers.get("x-request-id"),
                    retry_after=_retry_after(resp.headers),
                )
        except TimeoutError as exc:
            raise Unreachable(f"{self.name}: no answer in time", code="upstream_timeout") from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def probe(self) -> str | None:
        # GET /models: every OpenAI-compatible server has it, and it costs the server nothing.
        # Any status counts as an answer (a 401 or 404 says the server is there).
        timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT, self._timeout.total or 600))
        try:
            async with self._client().get(
                self._base + "/models", timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.read()
                return None
        except TimeoutError:
            return f"no answer to GET /models in {timeout.total:g} s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)


#: Seconds a health probe waits for an answer.
PROBE_TIMEOUT = 5.0

# One answer larger than this is refused: a hostile or broken backend must not exhaust memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


async def _read_capped(resp: aiohttp.ClientResponse, name: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared <= MAX_RESPONSE_BYTES:
        return await resp.read()  # the common case: one read, no copying
    parts, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise Unreachable(
                f"{name}: the answer exceeds {MAX_RESPONSE_BYTES} bytes",
                code="upstream_response_too_large",
            )
        parts.append(chunk)
    return b"".join(parts)


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    get = headers.get
    if (ms := get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None
