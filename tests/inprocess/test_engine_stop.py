"""A graceful stop loses no answered request: the group commit it finds in progress is
finished, not cancelled, so nothing the backend answered is sent again after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from lowtide.domain.work import Outcome, RequestState
from lowtide.testing.upstream import FakeUpstream
from tests.inprocess.conftest import AppFactory, read_results, submit, wait_for
from tests.support.batches import chat_line

N = 8


async def test_a_stop_finishes_the_group_commit_in_progress(
    lowtide_app: AppFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # All N answers in one group: the sink commits when it holds N, never on its timer.
    app = await lowtide_app(
        upstream, max_concurrency=N, engine={"commit_interval": 3600, "commit_batch": N}
    )
    engine = app.server.engine
    assert engine is not None
    sink, record = engine.sink, engine.sink.store.record_outcomes
    stop_requested = asyncio.Event()
    held: list[int] = []

    async def record_after_stop(outcomes: Sequence[Outcome], now: int) -> list[str]:
        # The sink's commit goes on only once the engine is stopping: the stop finds it
        # in progress, as when an answer's group is still queued for the writer.
        held.append(len(outcomes))
        await stop_requested.wait()
        return await record(outcomes, now)

    sink_stop = sink.stop

    def stop_and_release() -> None:
        sink_stop()
        stop_requested.set()

    monkeypatch.setattr(sink.store, "record_outcomes", record_after_stop)
    monkeypatch.setattr(sink, "stop", stop_and_release)

    lines = [chat_line(f"s-{i}", f"question {i}") for i in range(N)]
    c = app.client()
    batch = await submit(c, lines)
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while held != [N]:
        assert len(held) <= 1, f"the answers came in more than one group: {held}"
        assert time.monotonic() < deadline, "the answers never reached the sink"
        await asyncio.sleep(0.01)

    await app.stop()
    states = app.db("SELECT state, count(*) FROM requests GROUP BY state")
    assert states == [(RequestState.SUCCEEDED, N)]

    monkeypatch.undo()
    await app.start()
    done = await wait_for(c, batch.id)
    assert done.status == "completed"
    outputs, errors = await read_results(c, done)
    assert len(outputs) == N and errors == []
    assert upstream.stats(per_key=True)["per_key"] == {f"question {i}": 1 for i in range(N)}
