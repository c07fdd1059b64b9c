"""``lowtide serve`` in front of llama.cpp's server, driven by the official ``openai`` SDK."""

from __future__ import annotations

import pytest

from tests.realengine.batches import (
    client,
    metric,
    read_results,
    submit,
    wait_for,
    wait_until_completed,
)
from tests.realengine.conftest import MODEL, LowtideFactory
from tests.realengine.lines import EDGE, OVERFLOW, chat_lines, check_against_llama
from tests.realengine.llama_server import LlamaServer
from tests.support.batches import assert_each_once


@pytest.mark.slow
def test_a_batch_of_varied_lines(make_lowtide: LowtideFactory, llama: LlamaServer) -> None:
    server = make_lowtide(max_attempts=3)
    c = client(server)
    lines = chat_lines(300, seed=11)
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "completed", batch
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)

    totals = check_against_llama(llama, lines, outputs, errors)
    # Every line far over the context is a 400, and besides them only lines near its end.
    overflowing = {line["custom_id"] for line in lines if line["custom_id"].startswith(OVERFLOW)}
    failed = {e["custom_id"] for e in errors}
    assert overflowing <= failed
    assert all(custom_id.startswith(EDGE) for custom_id in failed - overflowing)
    assert {e["error"]["code"] for e in errors} == {"context_length_exceeded"}
    assert all(e["response"]["status_code"] == 400 for e in errors)
    assert totals.cut_by_context > 0, "some answers should run into the end of the context"

    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (300, len(outputs), len(errors))
    usage = batch.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        totals.input_tokens,
        totals.output_tokens,
        totals.total_tokens,
    )
    tokens = "lowtide_tokens_total"
    assert metric(server, tokens, model=MODEL, direction="input") == totals.input_tokens
    assert metric(server, tokens, model=MODEL, direction="output") == totals.output_tokens


def test_cancel_mid_run(make_lowtide: LowtideFactory, llama: LlamaServer) -> None:
    server = make_lowtide(max_concurrency=2)
    c = client(server)
    lines = chat_lines(150, seed=12, prefix="c")
    for line in lines:  # longer answers, so that the batch is still running when cancelled
        line["body"]["max_tokens"] = 48
    batch = submit(c, lines)
    wait_until_completed(c, batch.id, 5)
    assert c.batches.cancel(batch.id).status == "cancelling"
    batch = wait_for(c, batch.id)
    assert batch.status == "cancelled", batch

    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert 5 <= len(outputs) < len(lines)
    cancelled = [e for e in errors if e["error"]["code"] == "batch_cancelled"]
    assert cancelled and all(e["response"] is None for e in cancelled)
    totals = check_against_llama(llama, lines, outputs, errors)
    usage = batch.usage
    assert (usage.input_tokens, usage.output_tokens) == (totals.input_tokens, totals.output_tokens)
    counts = batch.request_counts
    assert (counts.completed, counts.failed) == (len(outputs), len(errors))


# Request bodies that llama-cpp-python's server rejects with a 500, not a 400: a request body
# that its own validation refuses, and a logit_bias key that is not a token id.
INVALID = {
    "top-p": {"top_p": 5},
    "role": {"messages": [{"role": "bogus", "content": "hello"}]},
    "response-format": {"response_format": {"type": "json_schema"}},
    "logit-bias": {"logit_bias": {"hello": 1}},
    "max-tokens": {"max_tokens": "abc"},
    "stop": {"stop": 5},
    "seed": {"seed": "x"},
}


def test_llama_500s_for_invalid_bodies_fail_at_once_saying_so(
    make_lowtide: LowtideFactory, llama: LlamaServer
) -> None:
    server = make_lowtide(max_attempts=3)
    c = client(server)
    good = chat_lines(4, seed=13, prefix="ok")[1:]  # not the first, which overflows
    bad = [
        {
            "custom_id": f"bad-{name}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 2,
                **change,
            },
        }
        for name, change in INVALID.items()
    ]
    lines = good + bad
    batch = wait_for(c, submit(c, lines).id)
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert {e["custom_id"] for e in errors} == {line["custom_id"] for line in bad}
    # Same status (500), body and message as a direct call: the error line keeps them.
    check_against_llama(llama, lines, outputs, errors)
    assert all(e["response"]["status_code"] == 500 for e in errors)
    assert all(e["error"]["code"] == "internal_server_error" for e in errors)

    # The llamacpp dialect knows these 500s are the request's fault: each invalid line was
    # sent once and failed, as a 400 would, instead of spending its 3 attempts.
    labels = {"backend": "llama", "model": MODEL}
    retried, failed = "lowtide_requests_retried_total", "lowtide_requests_failed_total"
    assert metric(server, retried, **labels) == 0
    assert metric(server, failed, **labels, status_class="5xx") == len(bad)
    dispatched = metric(server, "lowtide_requests_dispatched_total", **labels)
    assert dispatched == len(good) + len(bad)
