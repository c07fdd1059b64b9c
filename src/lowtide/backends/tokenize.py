"""Counting prompts' tokens with a backend's own tokenizer, where it has one (for estimates:
docs/extensions.md, "Cost estimate").

vLLM and SGLang answer ``POST /tokenize`` at the server's root (beside ``/v1``) with
``{"count": ...}`` for ``{"model", "prompt"}`` or ``{"model", "messages"}`` (the chat template
counted too); llama.cpp takes ``{"content"}`` and answers ``{"tokens": [...]}``. A backend
without the route, or one that refuses, gives no count: the caller falls back to an
approximation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from lowtide.settings import BackendSettings

logger = logging.getLogger(__name__)

#: Seconds for each tokenize call: an estimate should not hang on a backend that is slow.
TIMEOUT = 10.0


def tokenize_url(backend: BackendSettings) -> str:
    """``/tokenize`` at the root of the server whose OpenAI routes are at ``base_url``."""
    return backend.base_url.rstrip("/").removesuffix("/v1") + "/tokenize"


async def count_tokens(
    backend: BackendSettings, model: str, payloads: Sequence[dict[str, Any]]
) -> list[int] | None:
    """The token count of each payload (``{"prompt": ...}`` or ``{"messages": ...}``) by the
    backend's tokenizer for ``model`` (the name it serves it under); None if it gives none."""
    headers = {"Content-Type": "application/json"}
    if key := backend.resolved_api_key():
        headers["Authorization"] = f"Bearer {key}"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    counts: list[int] = []
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            for payload in payloads:
                body = _body(backend, model, payload)
                async with session.post(
                    tokenize_url(backend), data=orjson.dumps(body), allow_redirects=False
                ) as resp:
                    found = _count(resp.status, await resp.read())
                if found is None:
                    return None
                counts.append(found)
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.info("backend %s did not tokenize: %s", backend.name, exc)
        return None
    return counts


def _body(backend: BackendSettings, model: str, payload: dict[str, Any]) -> dict[str, Any]:
    if backend.dialect != "llamacpp":
        return {"model": model, **payload}
    if "messages" in payload:  # llama.cpp tokenizes text: the messages' contents, joined
        texts = [m.get("content") for m in payload["messages"] if isinstance(m, dict)]
        return {"content": "\n".join(t for t in texts if isinstance(t, str))}
    return {"content": payload.get("prompt", "")}


def _count(status: int, raw: bytes) -> int | None:
    if status != 200:
        return None
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    count = answer.get("count")
    if type(count) is int and count >= 0:
        return count
    tokens = answer.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None
