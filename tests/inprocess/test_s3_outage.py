"""A short outage of the object store while a batch runs costs its lines nothing: reads of
request lines that fail are tried again without spending attempts, and the batch completes
once the store answers again (with two attempts a line, it would otherwise fail them all)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from lowtide import metrics
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import chat_line
from tests.support.moto import MotoServer
from tests.support.proxy import Proxy

from .conftest import AppFactory, eventually, read_results, submit, wait_for


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


def failures() -> float:
    return metrics.INPUT_READ_FAILURES._value.get()


async def test_a_short_store_outage_during_dispatch_costs_no_line(
    lowtide_app: AppFactory, upstream: FakeUpstream, moto: MotoServer
) -> None:
    target = urlsplit(moto.endpoint)
    assert target.hostname is not None and target.port is not None
    async with Proxy(target.hostname, target.port) as proxy:
        bucket = moto.new_bucket()
        storage = moto.toml(bucket, "outage").replace(moto.endpoint, proxy.url)
        upstream.configure(latency=0.02)
        app = await lowtide_app(upstream, extra=storage, max_attempts=2)
        c = app.client()
        lines = [chat_line(f"s-{i}", f"stored {i}") for i in range(300)]
        batch = await submit(c, lines)
        await eventually(
            lambda: upstream.stats()["requests"] >= 20, "the batch is being dispatched"
        )
        before = failures()
        await proxy.cut()
        # Many more reads failed than the lines in flight have attempts (two each, sixteen
        # lines at a time): spending attempts, some lines would have failed by now.
        await eventually(lambda: failures() >= before + 60, "reads fail during the outage")
        await proxy.mend()
        done = await wait_for(c, batch.id, patience=120)
        outputs, errors = await read_results(c, done)
    assert done.status == "completed"
    assert done.request_counts.completed == len(lines) and done.request_counts.failed == 0
    assert sorted(o["custom_id"] for o in outputs) == sorted(x["custom_id"] for x in lines)
    assert errors == []
