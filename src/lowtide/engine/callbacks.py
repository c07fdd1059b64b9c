"""``metadata.ds_batch_finish_callback``: POST the final batch object once the batch is terminal.

Only to hosts listed in ``callbacks.allowed_hosts`` (none by default), never following a
redirect, at most three tries with backoff (docs/api-compatibility.md, "Callbacks"). Delivery
is best effort: a process that dies between finalising a batch and calling back does not call
back.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import aiohttp
import orjson

from lowtide.domain.records import BatchRecord
from lowtide.settings import CallbackSettings

logger = logging.getLogger(__name__)

CALLBACK_KEY = "ds_batch_finish_callback"
_TRIES = 3


def callback_url(batch: BatchRecord, settings: CallbackSettings) -> str | None:
    """The batch's callback URL if it may be called, else None (and say why in the log)."""
    url = (batch.metadata or {}).get(CALLBACK_KEY)
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        logger.warning("batch %s: callback %r is not an http(s) URL; not called", batch.id, url)
        return None
    if parts.hostname.lower() not in {h.lower() for h in settings.allowed_hosts}:
        logger.warning(
            "batch %s: callback host %s is not in callbacks.allowed_hosts; not called",
            batch.id,
            parts.hostname,
        )
        return None
    return url


async def send_callback(batch: BatchRecord, settings: CallbackSettings) -> bool:
    url = callback_url(batch, settings)
    if url is None:
        return False
    body = orjson.dumps(batch.to_api())
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, _TRIES + 1):
            if await _post(session, url, body):
                logger.info("batch %s: callback delivered", batch.id)
                return True
            if attempt < _TRIES:
                await asyncio.sleep(2**attempt)
    logger.warning("batch %s: callback failed after %d tries", batch.id, _TRIES)
    return False


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    try:
        async with session.post(
            url,
            data=body,
            headers={"content-type": "application/json"},
            allow_redirects=False,  # a redirect could lead anywhere, including inside
        ) as resp:
            return 200 <= resp.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False
