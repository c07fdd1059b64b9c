"""Offload to a hosted Batch API, in-process: lowtide with a batch backend (``kind = "batch"``)
pointing at the fake hosted Batch API (``lowtide.testing.batch_api``) on a loopback port of this
process, and for comparison the same lines on an HTTP backend (the fake upstream). Each fault
the fake can inject is shown to end as docs/offload.md says."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lowtide.testing.batch_api import BatchApiConfig, FakeBatchApi
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import ALICE, assert_each_once, chat_line
from tests.support.offload import batch_backend, comparable, submit, upstream_keys

from .conftest import AppFactory, eventually, read_results, wait_for


@pytest.fixture
async def batch_api() -> AsyncIterator[FakeBatchApi]:
    async with FakeBatchApi(BatchApiConfig()) as api:
        yield api


def lines_for(n: int, prefix: str = "q", content: str = "hello") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}{i}", f"{content} {i}") for i in range(n)]


async def test_a_batch_runs_upstream_in_chunks_as_it_would_locally(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    lines = lines_for(100)
    lines[5] = chat_line("q5", "hello 5 FAIL400")
    app = await lowtide_app(None, extra=batch_backend(batch_api, max_lines_per_chunk=40))
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 100, "completed": 99, "failed": 1}
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    # Chunks within the limit: 40 + 40 + 20 lines, one upstream batch each, made once.
    sizes = sorted(b["request_counts"]["total"] for b in await _fake_batches(batch_api))
    assert sizes == [20, 40, 40]
    assert set(batch_api.stats()["creates_by_chunk"].values()) == {1}
    # Its files are deleted once the results are in (just after, for the last chunk).
    await eventually(lambda: batch_api.objects.files == {}, "nothing left upstream")
    assert batch.model_extra["offloaded"] == {
        "lines": 100,
        "running": 0,
        "by_backend": {"hosted": 100},
        "running_by_backend": {"hosted": 0},
    }

    # The same file on an HTTP backend: the same result lines, usage and cost.
    local = await lowtide_app(upstream)
    lc = local.client(ALICE)
    local_batch = await wait_for(lc, (await submit(lc, lines)).id)
    local_out, local_err = await read_results(lc, local_batch)
    assert comparable(out) == comparable(local_out) and comparable(err) == comparable(local_err)
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["error"]["code"] == "context_length_exceeded"
    assert batch.usage == local_batch.usage
    assert batch.model_extra["cost"] == local_batch.model_extra["cost"]
    assert local_batch.model_extra["offloaded"] is None


async def test_upstream_line_failures_follow_the_retry_rules(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    lines = lines_for(6)
    lines[1] = chat_line("q1", "once FAIL500ONCE")
    lines[2] = chat_line("q2", "always FAIL500")
    app = await lowtide_app(None, extra=batch_backend(batch_api), max_attempts=3)
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert [e["custom_id"] for e in err] == ["q2"]
    assert err[0]["response"]["status_code"] == 500
    assert err[0]["error"]["message"].endswith("(after 3 attempts)")
    runs = upstream_keys(batch_api)
    # A 5xx is retried, upstream again (no other backend): the one that failed once ran twice,
    # the one that always fails ran max_attempts times, every other line once.
    assert runs["once FAIL500ONCE"] == 2 and runs["always FAIL500"] == 3
    assert all(n == 1 for key, n in runs.items() if "FAIL" not in key)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"fail_next": 1}, "upstream_batch_failed"),
        ({"expire_next": 1, "expire_done": 0.5}, "upstream_batch_expired"),
        ({"lose_output_next": 1}, "upstream_output_lost"),
    ],
)
async def test_an_upstream_batch_that_ends_badly_sends_its_lines_back(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, fault: dict[str, Any], code: str
) -> None:
    batch_api.configure(**fault)
    lines = lines_for(20)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    assert batch.status == "completed"
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert len(out) == 20 and err == []
    fakes = await _fake_batches(batch_api)
    assert len(fakes) >= 2  # the lines that did not run went upstream again, in a new batch
    # Each line ran upstream once, except those of the bad batch, which ran once more at most
    # (the expired batch's finished half, and the lost output's lines, were run already).
    runs = upstream_keys(batch_api)
    assert set(runs) == {f"hello {i}" for i in range(20)}
    assert max(runs.values()) <= 2
    # Billed once: usage is the sum of the output lines' usage.
    assert batch.usage.input_tokens == sum(
        o["response"]["body"]["usage"]["prompt_tokens"] for o in out
    )
    # An attempt was spent on each line sent back: the store says so.
    attempts = app.db("SELECT MAX(attempts) FROM requests")[0][0]
    assert attempts == 2, code


async def test_lines_sent_back_run_elsewhere_when_the_model_has_an_http_backend(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    batch_api.configure(fail_next=1)
    upstream.configure(latency=0.02)
    lines = lines_for(30)
    # One request at a time on the HTTP backend: the batch backend takes most lines first.
    app = await lowtide_app(upstream, extra=batch_backend(batch_api), max_concurrency=1)
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert batch.status == "completed" and len(out) == 30
    # The chunk's upstream batch failed: its lines (an attempt spent on each) ran on the HTTP
    # backend, not upstream again. Lines that were never in it may have gone upstream in later
    # chunks: how many the HTTP backend took meanwhile depends on the machine's speed.
    fakes = await _fake_batches(batch_api)
    assert fakes[0]["status"] == "failed"
    assert all(b["status"] == "completed" for b in fakes[1:])
    content = {line["custom_id"]: line["body"]["messages"][-1]["content"] for line in lines}
    sent_back = {
        content[row[0]] for row in app.db("SELECT custom_id FROM requests WHERE attempts >= 2")
    }
    ran_here = upstream.stats(per_key=True)["per_key"]
    ran_upstream = upstream_keys(batch_api)
    elsewhere = {k: (ran_here.get(k, 0), ran_upstream.get(k, 0)) for k in sent_back}
    assert sent_back and all(runs == (1, 0) for runs in elsewhere.values()), (elsewhere, fakes)
    # Each line ran once, here or upstream, and the batch says how many ran upstream.
    assert upstream.stats()["requests"] + sum(ran_upstream.values()) == 30
    offloaded = batch.model_extra["offloaded"]
    assert offloaded["lines"] == offloaded["by_backend"]["hosted"] == sum(ran_upstream.values())
    assert offloaded["running"] == 0


async def test_creates_that_hit_429_or_lose_their_answer_make_one_upstream_batch(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    # Without idempotency upstream (as a hosted API may be), only the listing prevents a
    # second batch after a create whose answer was lost.
    batch_api.configure(
        rate_429_creates=2,
        retry_after=0.2,
        lose_create_answers=2,
        lose_upload_answers=1,
        honour_idempotency=False,
    )
    lines = lines_for(30)
    app = await lowtide_app(None, extra=batch_backend(batch_api, max_lines_per_chunk=10))
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    stats = batch_api.stats()
    assert stats["create_429"] == 2 and stats["lost_create_answers"] == 2
    assert stats["lost_upload_answers"] == 1
    # Three chunks, three upstream batches, three uploads: nothing made twice.
    assert stats["batches_created"] == 3 and stats["uploads"] == 3
    assert sorted(stats["creates_by_chunk"].values()) == [1, 1, 1]
    assert all(n == 1 for n in upstream_keys(batch_api).values())


async def test_a_create_retried_with_the_same_idempotency_key_answers_the_first_batch(
    batch_api: FakeBatchApi,
) -> None:
    from lowtide.backends.batch_api import BatchApi
    from lowtide.settings import BackendSettings

    api = BatchApi(
        BackendSettings(name="b", kind="batch", base_url=batch_api.base_url, models=["m"])
    )
    try:
        file_id = await api.upload("x.jsonl", b'{"custom_id": "1"}\n')
        first = await api.create(file_id, "/v1/chat/completions", "24h", "chunk_a", "batch_a")
        again = await api.create(file_id, "/v1/chat/completions", "24h", "chunk_a", "batch_a")
        assert again.id == first.id
        assert (await api.find_batch("chunk_a", 0.0)) is not None
        assert await api.find_batch("chunk_b", 0.0) is None
        assert await api.find_file("x.jsonl", 0.0) == file_id
    finally:
        await api.close()
    assert batch_api.stats()["batches_created"] == 1


async def test_cancel_reaches_the_upstream_and_keeps_its_partial_results(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    batch_api.configure(run_seconds=600, cancel_done=0.5)
    lines = lines_for(20)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    created = await submit(c, lines)
    await eventually(lambda: _fake_running(batch_api), "the upstream batch runs")
    await c.batches.cancel(created.id)
    batch = await wait_for(c, created.id)
    assert batch.status == "cancelled"
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert len(out) == 10  # the half the upstream ran before it cancelled
    assert {e["error"]["code"] for e in err} == {"batch_cancelled"}
    assert batch_api.stats()["cancels"] == 1
    assert batch.request_counts.model_dump() == {"total": 20, "completed": 10, "failed": 10}


async def test_cancel_while_the_upstream_batch_validates(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    batch_api.configure(validation_seconds=600)
    lines = lines_for(10)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    created = await submit(c, lines)
    await eventually(lambda: batch_api.stats()["batches_created"] == 1, "upstream batch made")
    await c.batches.cancel(created.id)
    batch = await wait_for(c, created.id)
    out, err = await read_results(c, batch)
    assert batch.status == "cancelled" and out == []
    assert [e["error"]["code"] for e in err] == ["batch_cancelled"] * 10
    assert [b["status"] for b in await _fake_batches(batch_api)] == ["cancelled"]


async def test_expiry_of_the_lowtide_batch_cancels_upstream(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, clock: Any
) -> None:
    batch_api.configure(run_seconds=600, cancel_done=0.25)
    lines = lines_for(20)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    created = await submit(c, lines)
    await eventually(lambda: _fake_running(batch_api), "the upstream batch runs")
    clock.shift(48 * 3600 + 1)
    batch = await wait_for(c, created.id)
    assert batch.status == "expired"
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert len(out) == 5 and {e["error"]["code"] for e in err} == {"batch_expired"}
    assert batch_api.stats()["cancels"] == 1


async def test_a_window_too_short_for_the_upstream(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    lines = lines_for(5)
    # Only the batch backend serves the model: the lines fail at once, saying why.
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines, window="24h")).id)
    out, err = await read_results(c, batch)
    assert batch.status == "completed" and out == []
    assert {e["error"]["code"] for e in err} == {"offload_window_too_short"}
    assert "24h" in err[0]["error"]["message"]
    # With an HTTP backend too, they simply run there.
    both = await lowtide_app(upstream, extra=batch_backend(batch_api))
    bc = both.client(ALICE)
    batch = await wait_for(bc, (await submit(bc, lines, window="24h")).id)
    out, err = await read_results(bc, batch)
    assert len(out) == 5 and err == []
    assert batch_api.stats()["uploads"] == 0 and batch.model_extra["offloaded"] is None


async def test_price_factor_and_kept_files(
    lowtide_app: AppFactory, batch_api: FakeBatchApi, upstream: FakeUpstream
) -> None:
    lines = lines_for(10)
    keys = {"price_factor": 2.0, "delete_files": False}
    app = await lowtide_app(None, extra=batch_backend(batch_api, **keys))
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines)).id)
    local = await lowtide_app(upstream)
    lc = local.client(ALICE)
    local_batch = await wait_for(lc, (await submit(lc, lines)).id)
    assert batch.usage == local_batch.usage
    local_cost = local_batch.model_extra["cost"]["amount"]
    assert batch.model_extra["cost"]["amount"] == pytest.approx(2 * local_cost)
    # Input and output files stay upstream.
    assert len(batch_api.objects.files) == 2


async def test_a_restart_takes_the_chunk_over_without_a_second_upstream_batch(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    batch_api.configure(run_seconds=600)
    lines = lines_for(10)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    created = await submit(c, lines)
    await eventually(lambda: _fake_running(batch_api), "the upstream batch runs")
    await app.restart()
    batch_api.objects.finish_now()
    batch = await wait_for(c, created.id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err) and len(out) == 10
    assert batch_api.stats()["batches_created"] == 1


# --- helpers ---------------------------------------------------------------------------------


async def _fake_batches(api: FakeBatchApi) -> list[dict[str, Any]]:
    return [b.to_api() for b in api.objects.batches.values()]


def _fake_running(api: FakeBatchApi) -> bool:
    return any(b.status == "in_progress" for b in api.objects.batches.values())


@pytest.mark.postgres
async def test_a_fleet_on_postgres_shares_the_chunks_and_takes_over_a_stopped_workers(
    pg_database: str, lowtide_app: AppFactory, batch_api: FakeBatchApi, tmp_path: Any
) -> None:
    batch_api.configure(run_seconds=600)
    server = f'\n[server]\ndatabase_url = "{pg_database}"\nstorage_url = "file://{tmp_path}"\n'
    extra = batch_backend(batch_api, max_lines_per_chunk=5) + server
    first = await lowtide_app(None, extra=extra)
    c = first.client(ALICE)
    lines = lines_for(40)
    created = await submit(c, lines)
    await eventually(lambda: batch_api.stats()["batches_created"] == 8, "8 upstream batches")
    second = await lowtide_app(None, extra=extra)
    # The worker that made the chunks stops while their upstream batches run: the other one
    # takes them over (their leases are let go at once), and polls them to the end.
    await first.stop()
    batch_api.objects.finish_now()
    c2 = second.client(ALICE)
    batch = await wait_for(c2, created.id)
    out, err = await read_results(c2, batch)
    assert_each_once(lines, out, err) and len(out) == 40
    chunks = await second.server.store.chunks_of(created.id)
    assert [c.lease_epoch for c in chunks] == [2] * 8  # each taken over once
    assert {c.lease_owner for c in chunks} == {second.server.engine.owner}  # type: ignore[union-attr]
    assert sorted(batch_api.stats()["creates_by_chunk"].values()) == [1] * 8
    assert all(n == 1 for n in upstream_keys(batch_api).values())
    await first.start()  # the fixture stops it again


async def test_a_paused_batch_gets_no_new_chunk_and_a_stopped_one_cancels_upstream(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    batch_api.configure(run_seconds=600, cancel_done=0.5)
    extra = batch_backend(batch_api, max_lines_per_chunk=10)
    app = await lowtide_app(None, extra=extra, api_only=True)
    c = app.client(ALICE)
    lines = lines_for(20)
    created = await submit(c, lines)
    # Paused from the moment it starts (a pause is refused while validating, so it is written
    # beside the server, whose engine is not running yet).
    app.db("UPDATE batches SET paused_at = ?1 WHERE id = ?2", _now(), created.id)
    await app.restart(api_only=False)
    engine = app.server.engine
    assert engine is not None and engine.offload is not None
    store, offload = app.server.store, engine.offload

    async def in_progress() -> bool:
        return (await c.batches.retrieve(created.id)).status == "in_progress"

    await eventually(in_progress, "validated, paused")
    looks = offload.looks
    await eventually(lambda: offload.looks >= looks + 5, "five looks at the batches")
    assert batch_api.stats()["uploads"] == 0 and await store.chunks_of(created.id) == []
    resumed_at = _now()
    await store.resume_batch("alice", created.id, resumed_at)
    await eventually(lambda: batch_api.stats()["batches_created"] == 2, "two upstream batches")
    assert all(ch.created_at >= resumed_at for ch in await store.chunks_of(created.id))
    # A stop (a cap) cancels the upstream batches; what they ran is kept.
    assert await store.stop_batch(created.id, "max_cost", _now())
    engine.wake()  # as the API does on a stop
    batch = await wait_for(c, created.id)
    assert batch.status == "cancelled" and batch.model_extra["stop_reason"] == "max_cost"
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err)
    assert len(out) == 10 and batch_api.stats()["cancels"] == 2
    assert {e["error"]["code"] for e in err} == {"batch_stopped"}


def _now() -> int:
    return int(time.time())


async def test_a_batch_backend_shows_whether_it_answers(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    class Nowhere:
        base_url = "http://127.0.0.1:9/v1"  # nothing listens: every call gets no answer

    extra = batch_backend(batch_api) + batch_backend(Nowhere(), name="gone").replace(
        "fake-model", "other-model"
    )
    app = await lowtide_app(None, extra=extra)
    c = app.client(ALICE)
    batch = await wait_for(c, (await submit(c, lines_for(3))).id)
    assert batch.status == "completed"
    stuck = await submit(c, [chat_line("x", "hello", model="other-model")])

    async def states() -> dict[str, str]:
        answer = await c.get("/backends", cast_to=object)
        assert isinstance(answer, dict)
        return {b["name"]: b["state"] for b in answer["data"]}

    async def gone_down() -> bool:
        return (await states()).get("gone") == "down"

    await eventually(gone_down, "the batch backend with no answer is down", patience=60)
    assert (await states())["hosted"] == "up"
    waiting = (await c.batches.retrieve(stuck.id)).model_extra["waiting_for"]
    assert waiting["backend"] == "gone" and "Connect" in waiting["error"]


async def test_a_chunk_of_a_backend_no_longer_configured_gives_its_lines_back(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    batch_api.configure(run_seconds=600)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    lines = lines_for(5)
    created = await submit(c, lines)
    await eventually(lambda: _fake_running(batch_api), "the upstream batch runs")
    await app.stop()
    # As if the chunk's backend had been taken out of the config before the restart.
    app.db("UPDATE offload_chunks SET backend = 'retired'")
    batch_api.configure(run_seconds=0)
    await app.start()
    batch = await wait_for(c, created.id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err) and len(out) == 5
    chunks = await app.server.store.chunks_of(created.id)
    assert [(ch.backend, ch.state) for ch in chunks] == [("retired", "done"), ("hosted", "done")]
    assert batch.model_extra["offloaded"]["by_backend"] == {"hosted": 5, "retired": 0}


async def test_lines_that_grow_past_the_upstreams_limit_fail_after_their_attempts(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    # An override that adds 4 KiB to each line: more than the room kept for it. A line fits
    # 4 KiB as it is stored (with its room), not once it has grown, alone or beside the other
    # (whether a retry's chunk holds one line or both depends on when each is due again).
    extra = batch_backend(batch_api, max_chunk_bytes=4096) + (
        'overrides = { user = "' + "x" * 4096 + '" }\n'
    )
    app = await lowtide_app(None, extra=extra, max_attempts=2)
    c = app.client(ALICE)
    lines = lines_for(2)
    batch = await wait_for(c, (await submit(c, lines)).id)
    out, err = await read_results(c, batch)
    assert out == [] and {e["error"]["code"] for e in err} == {"upstream_batch_failed"}
    assert "over the upstream's" in err[0]["error"]["message"]
    assert batch_api.stats()["uploads"] == 0


async def test_an_engine_that_takes_its_own_chunk_back_drives_it_on(
    lowtide_app: AppFactory, batch_api: FakeBatchApi
) -> None:
    """An engine that stalled past a chunk's lease claims it again itself (a new epoch): the
    driver of the old epoch can write nothing more, so a new one must take over, or the chunk,
    whose lease this engine keeps renewing, would stay where it is for ever."""
    batch_api.configure(run_seconds=600)
    app = await lowtide_app(None, extra=batch_backend(batch_api))
    c = app.client(ALICE)
    lines = lines_for(5)
    created = await submit(c, lines)
    await eventually(lambda: _fake_running(batch_api), "the upstream batch runs")
    app.db("UPDATE offload_chunks SET lease_until = 0")  # as if it had run out

    def epoch() -> int:
        return int(app.db("SELECT lease_epoch FROM offload_chunks")[0][0])

    await eventually(lambda: epoch() == 2, "taken back under a new epoch")
    batch_api.objects.finish_now()
    batch = await wait_for(c, created.id)
    out, err = await read_results(c, batch)
    assert_each_once(lines, out, err) and len(out) == 5
    assert batch_api.stats()["batches_created"] == 1
