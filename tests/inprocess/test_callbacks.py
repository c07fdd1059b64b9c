"""ds_batch_finish_callback: called once the batch is terminal, only on allowed hosts, never
following a redirect. The receiver is an aiohttp server on this test's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.support.batches import TEST_URL, ds_lines

from .conftest import AppFactory, eventually, submit, wait_for

ALLOWED = '[callbacks]\nallowed_hosts = ["127.0.0.1"]\n'


@dataclass
class Receiver:
    """Records each POST: (path, JSON body, loop time of arrival)."""

    calls: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append((request.path, body, asyncio.get_running_loop().time()))
        if request.path == "/redirect":
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", got.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield got
    await runner.cleanup()


def logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


async def test_callback_posts_the_final_batch_to_an_allowed_host(
    lowtide_app: AppFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lowtide")
    c = (await lowtide_app(extra=ALLOWED)).client()
    hook = receiver.url + "/hook"
    meta = {"ds_batch_finish_callback": hook}
    batch = await wait_for(c, (await submit(c, ds_lines(1), endpoint=TEST_URL, metadata=meta)).id)
    await eventually(lambda: logged(caplog, "callback delivered"), "the callback is delivered")
    ((path, body, _),) = receiver.calls  # delivered once, and not tried again
    assert path == "/hook" and body["id"] == batch.id and body["status"] == "completed"
    assert body["output_file_id"] == batch.output_file_id
    assert body["metadata"] == meta


async def test_callback_to_a_host_not_allowed_is_never_sent(
    lowtide_app: AppFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    c = (await lowtide_app()).client()  # no allowed hosts: the default
    meta = {"ds_batch_finish_callback": receiver.url + "/hook"}
    await wait_for(c, (await submit(c, ds_lines(1), endpoint=TEST_URL, metadata=meta)).id)
    # The engine decided not to call (it says so when it decides): nothing was sent before
    # that, and nothing is sent after it.
    await eventually(
        lambda: logged(caplog, "is not in callbacks.allowed_hosts; not called"),
        "the engine refuses the callback",
    )
    assert receiver.calls == []


async def test_callback_redirects_are_not_followed(
    lowtide_app: AppFactory, receiver: Receiver
) -> None:
    c = (await lowtide_app(extra=ALLOWED)).client()
    meta = {"ds_batch_finish_callback": receiver.url + "/redirect"}
    await wait_for(c, (await submit(c, ds_lines(1), endpoint=TEST_URL, metadata=meta)).id)
    # A redirect is not a success: it is tried again, after a backoff of 2 s (real time: the
    # engine's loop clock is never moved), and never followed to /elsewhere.
    await eventually(lambda: len(receiver.calls) >= 2, "the callback is tried again")
    assert {path for path, _, _ in receiver.calls} == {"/redirect"}
    first, second = receiver.calls[0][2], receiver.calls[1][2]
    assert second - first >= 2.0 - 0.05  # not before the backoff (timer granularity aside)
