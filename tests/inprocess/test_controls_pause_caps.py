"""Pause, resume, caps and priority through the ``openai`` SDK: the extension fields a create
takes in ``extra_body``, the routes reached with the SDK's generic ``post``, and what the
batch object shows (docs/extensions.md)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types import Batch

from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import TEST_URL, assert_each_once, chat_line, ds_lines

from .conftest import App, AppFactory, eventually, read_results, submit, wait_for

EXTENSIONS = (
    "priority",
    "max_cost",
    "max_error_rate",
    "paused_at",
    "stop_reason",
    "lines_per_minute",
    "estimated_completion_at",
)


def lines_for(n: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"{prefix} question {i}") for i in range(n)]


async def pause(c: openai.AsyncOpenAI, batch_id: str) -> Batch:
    return await c.post(f"/batches/{batch_id}/pause", cast_to=Batch)


async def resume(c: openai.AsyncOpenAI, batch_id: str) -> Batch:
    return await c.post(f"/batches/{batch_id}/resume", cast_to=Batch)


def leased(app: App, batch_id: str) -> int:
    return int(
        app.db("SELECT COUNT(*) FROM requests WHERE batch_id = ? AND state = 1", batch_id)[0][0]
    )


def extra(batch: Batch, key: str) -> Any:
    return (batch.model_extra or {})[key]


async def test_every_batch_carries_the_extension_fields(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    batch = await submit(c, ds_lines(2), endpoint=TEST_URL)
    assert {key: extra(batch, key) for key in EXTENSIONS} == {
        "priority": 0,
        "max_cost": None,
        "max_error_rate": None,
        "paused_at": None,
        "stop_reason": None,
        "lines_per_minute": None,
        "estimated_completion_at": None,
    }
    done = await wait_for(c, batch.id)
    assert done.status == "completed" and extra(done, "stop_reason") is None


async def test_create_takes_the_controls_in_extra_body(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    controls = {"priority": 7, "max_cost": 2.5, "max_error_rate": 0.25}
    batch = await submit(c, ds_lines(2), endpoint=TEST_URL, extra_body=controls)
    assert {k: extra(batch, k) for k in controls} == controls
    again = await c.batches.retrieve(batch.id)
    assert {k: extra(again, k) for k in controls} == controls


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 1.5),
        ("priority", "high"),
        ("priority", 2**31),
        ("max_cost", 0),
        ("max_cost", -1),
        ("max_cost", "1"),
        ("max_error_rate", 1.5),
        ("max_error_rate", True),
    ],
)
async def test_bad_controls_are_refused_at_the_call(
    lowtide_app: AppFactory, field: str, value: Any
) -> None:
    c = (await lowtide_app()).client()
    with pytest.raises(openai.BadRequestError) as raised:
        await submit(c, ds_lines(1), endpoint=TEST_URL, extra_body={field: value})
    assert raised.value.body["param"] == field  # type: ignore[index]
    assert raised.value.body["code"] == "invalid_value"  # type: ignore[index]


async def test_a_paused_batch_sends_nothing_new_and_resumes(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.02)
    app = await lowtide_app(upstream, max_concurrency=2)
    c = app.client()
    lines = lines_for(60, "paused")
    batch = await submit(c, lines)
    await eventually(
        lambda: app.db("SELECT completed FROM batches WHERE id = ?", batch.id)[0][0] >= 3,
        "some lines done",
    )
    paused = await pause(c, batch.id)
    assert paused.status == "in_progress" and extra(paused, "paused_at") is not None
    assert extra(paused, "estimated_completion_at") is None
    # In-flight requests finish; then nothing of the batch is leased any more.
    await eventually(lambda: leased(app, batch.id) == 0, "no request of the batch in flight")
    sent = upstream.stats()["requests"]
    # Another batch runs to its end meanwhile: the engine kept going, and did not send the
    # paused one's lines.
    other = await wait_for(c, (await submit(c, lines_for(5, "other"))).id)
    assert other.status == "completed"
    assert upstream.stats()["requests"] == sent + 5
    still = await c.batches.retrieve(batch.id)
    assert still.status == "in_progress" and extra(still, "paused_at") == extra(paused, "paused_at")
    # Pausing again answers the batch as it is; resuming lets it finish.
    assert extra(await pause(c, batch.id), "paused_at") == extra(paused, "paused_at")
    resumed = await resume(c, batch.id)
    assert extra(resumed, "paused_at") is None
    done = await wait_for(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 60
    outputs, errors = await read_results(c, done)
    assert_each_once(lines, outputs, errors)


async def test_pause_and_resume_need_a_batch_in_progress(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    done = await wait_for(c, (await submit(c, ds_lines(1), endpoint=TEST_URL)).id)
    for call in (pause, resume):
        with pytest.raises(openai.ConflictError) as raised:
            await call(c, done.id)
        assert "completed" in raised.value.message
        with pytest.raises(openai.NotFoundError):
            await call(c, "batch_" + "0" * 32)


async def test_resume_of_a_batch_not_paused_answers_it_as_it_is(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(hang_contains="HANG")
    app = await lowtide_app(upstream)
    c = app.client()
    batch = await submit(c, [chat_line("h", "HANG forever")])
    await wait_for(c, batch.id, {"in_progress"})
    resumed = await resume(c, batch.id)
    assert resumed.status == "in_progress" and extra(resumed, "paused_at") is None
    with pytest.raises(openai.NotFoundError):  # another account's batch is not found
        await app.client("sk-test-bob-0000001").post(f"/batches/{batch.id}/pause", cast_to=Batch)
    await c.batches.cancel(batch.id)


async def test_a_paused_batch_can_be_cancelled_and_expires(
    lowtide_app: AppFactory, upstream: FakeUpstream, clock: Any
) -> None:
    upstream.configure(latency=0.05)
    app = await lowtide_app(upstream, max_concurrency=1)
    c = app.client()
    one, two = await submit(c, lines_for(20, "one")), await submit(c, lines_for(20, "two"))
    for batch in (one, two):
        await wait_for(c, batch.id, {"in_progress"})
        await pause(c, batch.id)
    for batch in (one, two):
        await eventually(lambda b=batch: leased(app, b.id) == 0, "nothing in flight")
    cancelled = await c.batches.cancel(one.id)
    assert cancelled.status == "cancelling" and extra(cancelled, "paused_at") is None
    assert extra(cancelled, "stop_reason") == "cancelled_by_user"
    assert (await wait_for(c, one.id)).status == "cancelled"
    clock.shift(25 * 3600)  # the window keeps running while a batch is paused
    expired = await wait_for(c, two.id)
    assert expired.status == "expired" and extra(expired, "paused_at") is None
    outputs, errors = await read_results(c, expired)
    assert_each_once(lines_for(20, "two"), outputs, errors)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


async def test_max_cost_stops_the_batch(lowtide_app: AppFactory, upstream: FakeUpstream) -> None:
    upstream.configure(latency=0.01)
    app = await lowtide_app(upstream, max_concurrency=1)
    c = app.client()
    lines = lines_for(200, "capped")
    # Each line: prompt "capped question N" (18-20 chars: 4 tokens), 16 output tokens.
    per_line = (4 * 0.8 + 16 * 2.0) * 0.5 / 1e6
    cap = per_line * 10.5
    batch = await submit(c, lines, extra_body={"max_cost": cap})
    done = await wait_for(c, batch.id)
    assert done.status == "cancelled" and extra(done, "stop_reason") == "max_cost"
    outputs, errors = await read_results(c, done)
    assert_each_once(lines, outputs, errors)
    assert {e["error"]["code"] for e in errors} == {"batch_stopped"}
    # Billed exactly what ran: every request the backend received is an output line (those
    # in flight at the stop finished and were recorded), and it took 11 lines to cross the
    # cap. How far past it the batch went depends on how many lines one slot finished before
    # the group commit that counted the crossing one: a matter of the machine's speed, so not
    # asserted (docs/extensions.md says what bounds it).
    cost = extra(done, "cost")["amount"]
    assert cost == pytest.approx(per_line * len(outputs))
    assert upstream.stats()["requests"] == len(outputs)
    assert 11 <= len(outputs) < 200
    assert done.request_counts.completed + done.request_counts.failed == 200


async def test_max_error_rate_stops_the_batch(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream, max_concurrency=4)
    c = app.client()
    # Every third line is refused with a 400 (not retried): a third of the lines fail.
    lines = [chat_line(f"e-{i}", f"{'FAIL400 ' if i % 3 == 0 else ''}line {i}") for i in range(400)]
    batch = await submit(c, lines, extra_body={"max_error_rate": 0.2})
    done = await wait_for(c, batch.id)
    assert done.status == "cancelled" and extra(done, "stop_reason") == "max_error_rate"
    outputs, errors = await read_results(c, done)
    assert_each_once(lines, outputs, errors)
    assert {e["error"]["code"] for e in errors} == {"context_length_exceeded", "batch_stopped"}
    ran = len(outputs) + sum(1 for e in errors if e["error"]["code"] != "batch_stopped")
    assert 100 <= ran < 400


async def test_priority_serves_the_higher_first(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.01, record_bodies=100)
    app = await lowtide_app(upstream, max_concurrency=1)
    c = app.client()
    # Paused while both are created, so that both are there when the engine picks.
    low = await submit(c, lines_for(30, "low"), extra_body={"priority": 0})
    high = await submit(c, lines_for(30, "high"), extra_body={"priority": 5})
    for batch in (low, high):
        await wait_for(c, batch.id, {"in_progress"})
        await pause(c, batch.id)
    for batch in (low, high):
        await eventually(lambda b=batch: leased(app, b.id) == 0, "nothing in flight")
    before = len(upstream.bodies())
    for batch in (high, low):
        await resume(c, batch.id)
    for batch in (high, low):
        assert (await wait_for(c, batch.id)).status == "completed"
    sent = [b["messages"][0]["content"].split()[0] for b in upstream.bodies()[before:]]
    # One slot: the high batch's lines go first; a low one may go while the high batch's
    # last line is still out (claimed once the high one had nothing left to claim).
    last_high = max(i for i, name in enumerate(sent) if name == "high")
    assert sent[: last_high + 1].count("low") <= 1
    assert sent.count("low") > 1  # the low batch's lines, after it
