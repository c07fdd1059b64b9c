"""Create, retrieve, list and cancel through the SDK: the synchronous rules of section 13."""

from __future__ import annotations

import time

import openai
import pytest

from .conftest import ALICE, BOB, chat_line, client, jsonl, submit, wait_for

TEST_URL = "/v1/chat/ds-test"


def ds_test_lines(n: int, url: str = TEST_URL, model: str = "batch-test-model"):
    return [chat_line(f"t{i}", f"hello {i}", model=model, url=url) for i in range(n)]


def test_create_answers_every_field(make_server):
    c = client(make_server())
    batch = submit(c, ds_test_lines(3), endpoint=TEST_URL, metadata={"ds_name": "Nightly"})
    raw = c.batches.with_raw_response.retrieve(batch.id).http_response.json()
    for key in (
        "id",
        "object",
        "endpoint",
        "errors",
        "input_file_id",
        "completion_window",
        "status",
        "output_file_id",
        "error_file_id",
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "request_counts",
        "metadata",
        "model",
        "usage",
        "cost",
    ):
        assert key in raw
    assert batch.id.startswith("batch_") and len(batch.id) == len("batch_") + 32
    assert batch.expires_at == batch.created_at + 86400
    assert set(raw["request_counts"]) == {"total", "completed", "failed"}


def test_test_model_runs_free_with_the_fixed_reply(make_server):
    c = client(make_server())
    batch = wait_for(c, submit(c, ds_test_lines(3), endpoint=TEST_URL).id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    lines = c.files.content(batch.output_file_id).text.splitlines()
    assert len(lines) == 3 and "This is a test result." in lines[0]
    assert batch.usage.input_tokens == 60 and batch.usage.output_tokens == 18
    assert batch.model_extra["cost"]["amount"] == 0
    assert batch.error_file_id is None


def test_test_model_on_the_wrong_url_fails(make_server):
    c = client(make_server())
    lines = ds_test_lines(2, url="/v1/chat/completions")
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("mismatched_test_url", 1),
        ("mismatched_test_url", 2),
    ]


def test_third_live_test_batch_is_429(make_server):
    # With no engine running, batches stay in validating: live, so they count.
    server = make_server(extra_args=["--api-only"])
    alice, bob = client(server, ALICE), client(server, BOB)
    file = alice.files.create(file=("t.jsonl", jsonl(ds_test_lines(1))), purpose="batch")
    for _ in range(2):
        alice.batches.create(input_file_id=file.id, endpoint=TEST_URL, completion_window="24h")
    with pytest.raises(openai.RateLimitError) as info:
        alice.batches.create(input_file_id=file.id, endpoint=TEST_URL, completion_window="24h")
    assert info.value.response.headers["retry-after"]
    # The limit is per account, and only for the test model.
    bob_file = bob.files.create(file=("t.jsonl", jsonl(ds_test_lines(1))), purpose="batch")
    bob.batches.create(input_file_id=bob_file.id, endpoint=TEST_URL, completion_window="24h")
    alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def test_create_rejects_bad_parameters(make_server):
    c = client(make_server())
    f = c.files.create(file=("a.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        c.batches.create(
            input_file_id=f.id, endpoint="/v1/invalid/endpoint", completion_window="24h"
        )
    assert info.value.code == "invalid_value" and info.value.param == "endpoint"
    assert "'/v1/chat/ds-test'" in info.value.message
    for window in ("1h", "48", "invalid", "", "337h", "15d", "0d"):
        with pytest.raises(openai.BadRequestError) as info:
            c.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=window
            )
        assert info.value.param == "completion_window"
    for window in ("24h", "7d", "336h", "14d"):
        c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=window
        )
    with pytest.raises(openai.BadRequestError) as info:
        c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"tags": ["a"]},
        )
    assert info.value.code == "invalid_type" and info.value.param == "metadata.tags"
    assert info.value.body["message"] == (
        "Invalid type for 'metadata.tags': expected a string, but got an array instead."
    )
    with pytest.raises(openai.BadRequestError) as info:
        c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={f"k{i}": "v" for i in range(17)},
        )
    assert info.value.code == "invalid_value"


def test_unknown_or_foreign_input_file_fails_the_batch(make_server):
    server = make_server()
    alice, bob = client(server, ALICE), client(server, BOB)
    foreign = bob.files.create(file=("b.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    for file_id in ("file-batch-000000000000000000000000", foreign.id):
        batch = alice.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = wait_for(alice, batch.id)
        assert batch.status == "failed"
        error = batch.errors.data[0]
        assert (error.code, error.param, error.line) == ("invalid_request", "input_file_id", None)
        assert error.message == (
            f"Cannot find file {file_id}, or it is not accessible to this account."
        )


def test_retrieve_and_cancel_errors(make_server):
    server = make_server()
    alice, bob = client(server, ALICE), client(server, BOB)
    with pytest.raises(openai.NotFoundError) as info:
        alice.batches.retrieve("batch_doesnotexist")
    assert "not found" in info.value.message
    batch = wait_for(alice, submit(alice, ds_test_lines(1), endpoint=TEST_URL).id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    with pytest.raises(openai.ConflictError) as info:
        alice.batches.cancel(batch.id)
    assert info.value.body["message"] == "Cannot cancel a batch with status 'completed'."
    assert bob.batches.list().data == []


def test_list_batches_filters_and_pages(make_server):
    c = client(make_server())
    f1 = c.files.create(file=("a.jsonl", jsonl(ds_test_lines(1))), purpose="batch")
    f2 = c.files.create(file=("b.jsonl", jsonl(ds_test_lines(1))), purpose="batch")
    made = []
    for i, (file, name) in enumerate([(f1, "Nightly run"), (f2, "weekly"), (f1, "nightly 2")]):
        made.append(
            c.batches.create(
                input_file_id=file.id,
                endpoint=TEST_URL,
                completion_window="24h",
                metadata={"ds_name": name},
            ).id
        )
        wait_for(c, made[-1])
        assert i >= 0
    assert [b.id for b in c.batches.list()] == made[::-1]
    page = c.batches.list(limit=2)
    assert [b.id for b in page.data] == made[:0:-1] and page.has_more
    assert [b.id for b in c.batches.list(limit=2, after=made[1])] == [made[0]]
    named = c.batches.list(extra_query={"ds_name": "NIGHTLY"})
    assert [b.id for b in named] == [made[2], made[0]]
    by_file = c.batches.list(extra_query={"input_file_ids": f2.id})
    assert [b.id for b in by_file] == [made[1]]
    assert len(c.batches.list(extra_query={"status": "completed,expired"}).data) == 3
    assert c.batches.list(extra_query={"status": "failed"}).data == []
    with pytest.raises(openai.BadRequestError):
        c.batches.list(extra_query={"status": "nonsense"})
    now = time.gmtime(time.time() + 3600)
    after = time.strftime("%Y%m%d%H%M%S", now)
    assert c.batches.list(extra_query={"create_after": after}).data == []
    assert len(c.batches.list(extra_query={"create_before": after}).data) == 3
