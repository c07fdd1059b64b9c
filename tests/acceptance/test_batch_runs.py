"""``lowtide serve`` as a process, driven by the ``openai`` SDK the README's way: a batch run,
a cancel and an expiry end to end, and what only a real process can show: a crash (SIGKILL)
and a clean stop (SIGTERM) mid-batch. Everything else about batch runs is tested in
tests/inprocess/test_batch_runs.py."""

from __future__ import annotations

import time
from typing import Any

import openai

from lowtide.testing.harness import Upstream

from .conftest import (
    ServerFactory,
    assert_each_once,
    chat_line,
    client,
    read_results,
    submit,
    wait_for,
)


def lines_for(n: int, prefix: str = "req", content: str = "question") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"{content} {i}") for i in range(n)]


def wait_until_completed_at_least(c: openai.OpenAI, batch_id: str, n: int) -> None:
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while c.batches.retrieve(batch_id).request_counts.completed < n:
        assert time.monotonic() < deadline, "batch made no progress"
        time.sleep(0.05)


def test_upload_create_wait_download_and_cancel(
    make_server: ServerFactory, upstream: Upstream
) -> None:
    c = client(make_server(upstream, max_concurrency=2))
    lines = [*lines_for(20), chat_line("bad-1", "please FAIL400 this")]
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 21, "completed": 20, "failed": 1}
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert [o["custom_id"] for o in outputs] == [line["custom_id"] for line in lines[:20]]
    assert errors[0]["error"]["code"] == "context_length_exceeded"

    upstream.configure(latency=0.2)
    lines = lines_for(40, prefix="cancel")
    batch = submit(c, lines)
    wait_until_completed_at_least(c, batch.id, 2)
    assert c.batches.cancel(batch.id).status == "cancelling"
    batch = wait_for(c, batch.id)
    assert batch.status == "cancelled"
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert 2 <= len(outputs) < 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_window_expiry(make_server: ServerFactory, upstream: Upstream) -> None:
    # A real process cannot have its clock moved: a two-second window ([testing]) instead.
    # 30 lines one at a time, 0.3 s each, need 9 s: the window surely ends first.
    upstream.configure(latency=0.3)
    extra = "[testing]\ncompletion_window_seconds = 2\n"
    c = client(make_server(upstream, max_concurrency=1, extra=extra))
    lines = lines_for(30)
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "expired" and batch.expired_at
    assert batch.expired_at >= batch.created_at + 2  # not before the window's end
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert len(outputs) < 30
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}


def test_kill_mid_batch_and_restart_loses_and_repeats_nothing(
    make_server: ServerFactory, upstream: Upstream
) -> None:
    upstream.configure(latency=0.02)
    server = make_server(upstream, max_concurrency=8)
    c = client(server)
    lines = lines_for(400)
    batch = submit(c, lines)
    wait_until_completed_at_least(c, batch.id, 100)
    server.kill()
    server.start()
    batch = wait_for(c, batch.id, timeout=120)
    assert batch.status == "completed" and batch.request_counts.completed == 400
    outputs, errors = read_results(c, batch)
    assert errors == []
    assert_each_once(lines, outputs, errors)
    per_key = upstream.stats(per_key=True)["per_key"]
    repeated = sum(count - 1 for count in per_key.values())
    # Only what was in flight, or answered but not yet committed, may be sent again.
    assert repeated <= 8 + 200, repeated
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    assert batch.usage.input_tokens == prompt  # billed once per line


def test_sigterm_drains_and_exits_cleanly(make_server: ServerFactory, upstream: Upstream) -> None:
    upstream.configure(latency=0.05)
    server = make_server(upstream, max_concurrency=4)
    c = client(server)
    lines = lines_for(200)
    batch = submit(c, lines)
    wait_until_completed_at_least(c, batch.id, 20)
    assert server.terminate() == 0  # it exits by itself (terminate waits, and fails on a hang)
    assert "engine stopped" in server.log()
    server.start()
    batch = wait_for(c, batch.id, timeout=60)
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert batch.request_counts.completed == 200
