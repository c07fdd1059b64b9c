"""ApiPrecedence: the GIL switch interval is short exactly while a request is in flight."""

from __future__ import annotations

import asyncio
import sys

import pytest
from starlette.types import Receive, Scope, Send

from lowtide.api.middleware import ApiPrecedence


async def test_the_interval_is_short_while_requests_are_in_flight() -> None:
    before = sys.getswitchinterval()
    seen: list[float] = []
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(sys.getswitchinterval())
        await release.wait()

    async def nothing() -> dict[str, object]:
        return {}

    async def ignore(message: dict[str, object]) -> None:
        return None

    wrapped = ApiPrecedence(app, interval=0.00002)
    try:
        first = asyncio.create_task(wrapped({"type": "http"}, nothing, ignore))
        second = asyncio.create_task(wrapped({"type": "http"}, nothing, ignore))
        await asyncio.sleep(0.01)
        assert seen == pytest.approx([0.00002, 0.00002])  # both run with the short interval
        release.set()
        await asyncio.gather(first, second)
        assert sys.getswitchinterval() == before  # back once none is in flight
        await wrapped({"type": "lifespan"}, nothing, ignore)  # not a request: untouched
        assert sys.getswitchinterval() == before
    finally:
        sys.setswitchinterval(before)
