"""Batches run end to end against the fake upstream: results, faults, cancel, expiry. (A crash
and a SIGTERM, which need a real process, are in tests/acceptance/test_batch_runs.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
import time_machine

from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import assert_each_once, chat_line

from .conftest import (
    AppFactory,
    read_results,
    submit,
    wait_completed_at_least,
    wait_for,
)


def lines_for(n: int, prefix: str = "req", content: str = "question") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"{content} {i}") for i in range(n)]


async def test_thousand_lines_complete_each_once(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.005)
    c = (await lowtide_app(upstream, max_concurrency=16)).client()
    lines = lines_for(1000)
    batch = await wait_for(c, (await submit(c, lines)).id, patience=120)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 1000, "completed": 1000, "failed": 0}
    outputs, errors = await read_results(c, batch)
    assert errors == [] and batch.error_file_id is None
    assert_each_once(lines, outputs, [])
    # Output lines come in input order, with the request's own answer.
    assert [o["custom_id"] for o in outputs] == [line["custom_id"] for line in lines]
    assert outputs[7]["response"]["body"]["choices"][0]["message"]["content"].endswith("question 7")
    assert all(o["id"].startswith("batch_req_") and o["error"] is None for o in outputs)
    # Usage is the sum of the lines' usage; cost is at half the real-time price.
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt, completion)
    expected = (prompt * 0.8 + completion * 2.0) / 1e6 * 0.5
    assert batch.model_extra["cost"]["amount"] == pytest.approx(expected)
    stats = upstream.stats(per_key=True)
    assert stats["max_concurrency_seen"] <= 16
    assert all(count == 1 for count in stats["per_key"].values())
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at


CASES = [
    ("{not json", "invalid_json_line", None),
    ('["an", "array"]', "invalid_json_line", None),
    (
        '{"method": "POST", "url": "/v1/chat/completions", "body": {}}',
        "missing_required_parameter",
        "custom_id",
    ),
    (
        '{"custom_id": 5, "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        "invalid_request",
        "custom_id",
    ),
    (
        '{"custom_id": "m", "method": "GET", "url": "/v1/chat/completions", "body": {}}',
        "invalid_method",
        "method",
    ),
    (
        '{"custom_id": "u", "method": "POST", "url": "/v1/chat/completion", "body": {}}',
        "url_not_found",
        "url",
    ),
    (
        '{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", '
        '"body": {"model": "fake-model", "input": "x"}}',
        "invalid_url",
        "url",
    ),
    (
        '{"custom_id": "t", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "batch-test-model", '
        '"messages": [{"role": "user", "content": "x"}]}}',
        "mismatched_test_url",
        "url",
    ),
    (
        '{"custom_id": "nm", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"messages": [{"role": "user", "content": "x"}]}}',
        "invalid_request",
        "body.model",
    ),
    (
        '{"custom_id": "s", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "fake-model", "stream": true, "messages": [{"role": "user", '
        '"content": "x"}]}}',
        "streaming_unsupported",
        "body.stream",
    ),
    (
        '{"custom_id": "nf", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}}',
        "model_not_found",
        "body.model",
    ),
    (
        '{"custom_id": "mm", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "renamed-model", "messages": [{"role": "user", "content": "x"}]}}',
        "mismatched_model",
        "body.model",
    ),
    (
        '{"custom_id": "ok-1", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}}',
        "duplicate_custom_id",
        "custom_id",
    ),
]


async def test_every_validation_code_with_its_line(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    good = chat_line("ok-1", "x")
    text = json.dumps(good) + "\n" + "\n".join(raw for raw, _, _ in CASES) + "\n"
    f = await c.files.create(file=("bad.jsonl", text.encode()), purpose="batch")
    created = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_for(c, created.id)
    assert batch.status == "failed" and batch.failed_at
    got = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert got == [(i + 2, code, param) for i, (_, code, param) in enumerate(CASES)]
    assert batch.request_counts.total == 0 and batch.output_file_id is None
    assert upstream.stats()["requests"] == 0


async def test_empty_file_fails_with_empty_file(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    f = await c.files.create(file=("empty.jsonl", b"\n\n"), purpose="batch")
    created = await c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await wait_for(c, created.id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [("empty_file", None)]


async def test_retries_through_429s_and_500s(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    # Each 429 pauses the whole backend for its Retry-After: the run lasts about
    # lines x rate_429 x retry_after.
    upstream.configure(rate_429=0.2, error_rate=0.2, retry_after=0.1, latency=0.002)
    c = (await lowtide_app(upstream, max_concurrency=8, max_attempts=20)).client()
    batch = await wait_for(c, (await submit(c, lines_for(120))).id, patience=120)
    assert batch.status == "completed" and batch.request_counts.completed == 120
    stats = upstream.stats()
    assert stats["rate_limited"] > 0 and stats["errors_injected"] > 0
    # A line told to wait is not sent again before its Retry-After has passed. That is causal
    # (lowtide reads the 429 after it was sent, then waits), so it holds on any machine. That
    # no *other* request arrives during a pause depends on how late a request already in
    # flight may arrive: bench/faults.py judges it, with a grace (tests/acceptance).
    assert stats["early_same_key"] == 0, stats


async def test_upstream_400_lands_in_the_error_file_unretried(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    lines = [*lines_for(10), chat_line("bad-1", "please FAIL400 this")]
    batch = await wait_for(c, (await submit(c, lines)).id)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 11, "completed": 10, "failed": 1}
    outputs, errors = await read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    (error,) = errors
    assert error["custom_id"] == "bad-1"
    assert error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert error["error"]["code"] == "context_length_exceeded"
    assert upstream.stats(per_key=True)["per_key"]["please FAIL400 this"] == 1
    # Failed lines are not billed.
    billed = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    assert batch.usage.input_tokens == billed


async def test_transient_500_is_retried_to_success(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    lines = [chat_line("flaky", "FAIL500ONCE now"), chat_line("fine", "fine")]
    batch = await wait_for(c, (await submit(c, lines)).id)
    assert batch.request_counts.completed == 2
    assert upstream.stats(per_key=True)["per_key"]["FAIL500ONCE now"] == 2


async def test_unreachable_lines_end_as_upstream_unavailable(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream, max_attempts=2)).client()
    lines = [chat_line("gone", "DROPCONN please"), chat_line("fine", "fine")]
    batch = await wait_for(c, (await submit(c, lines)).id)
    outputs, errors = await read_results(c, batch)
    assert [o["custom_id"] for o in outputs] == ["fine"]
    (error,) = errors
    assert error["response"] is None and error["error"]["code"] == "upstream_unavailable"
    assert upstream.stats(per_key=True)["per_key"]["DROPCONN please"] == 2  # max_attempts


async def test_model_is_renamed_for_its_backend(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    lines = [chat_line("r", "hello", model="renamed-model")]
    batch = await wait_for(c, (await submit(c, lines)).id)
    outputs, _ = await read_results(c, batch)
    assert outputs[0]["response"]["body"]["model"] == "upstream-name"
    assert batch.model == "renamed-model"


async def test_cancel_mid_run_keeps_partial_results(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.2)
    c = (await lowtide_app(upstream, max_concurrency=2)).client()
    lines = lines_for(40)
    batch = await submit(c, lines)
    await wait_completed_at_least(c, batch.id, 4)
    cancelling = await c.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = await wait_for(c, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    outputs, errors = await read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert 4 <= len(outputs) < 40
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    counts = batch.request_counts
    assert (counts.completed, counts.failed, counts.total) == (len(outputs), len(errors), 40)
    assert (await c.batches.cancel(batch.id)).status == "cancelled"  # idempotent


async def test_window_expiry_sends_unrun_lines_to_the_error_file(
    lowtide_app: AppFactory, upstream: FakeUpstream, clock: time_machine.Coordinates
) -> None:
    upstream.configure(latency=0.1)
    c = (await lowtide_app(upstream, max_concurrency=1)).client()
    lines = lines_for(30)
    batch = await submit(c, lines)
    await wait_completed_at_least(c, batch.id, 1)
    assert (await c.batches.retrieve(batch.id)).status == "in_progress"
    clock.shift(24 * 3600)  # the whole completion window: 30 lines need 3 s, it has run out
    batch = await wait_for(c, batch.id)
    assert batch.status == "expired" and batch.expired_at and batch.finalizing_at
    assert batch.expired_at >= batch.expires_at  # not before the window's end
    outputs, errors = await read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert 1 <= len(outputs) < 30
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert errors[0]["error"]["message"] == (
        "This request could not be executed before the completion window expired."
    )
    assert batch.request_counts.failed == len(errors)
