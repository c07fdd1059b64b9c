"""Create, retrieve, list and cancel through the SDK: the synchronous rules of the wire
contract."""

from __future__ import annotations

import time

import openai
import pytest

from tests.support.batches import ALICE, BOB, TEST_URL, chat_line, ds_lines, jsonl

from .conftest import AppFactory, ids, submit, wait_for

FIELDS = (
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
)


async def test_create_answers_every_field(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    batch = await submit(c, ds_lines(3), endpoint=TEST_URL, metadata={"ds_name": "Nightly"})
    raw = (await c.batches.with_raw_response.retrieve(batch.id)).http_response.json()
    for key in FIELDS:
        assert key in raw
    assert batch.id.startswith("batch_") and len(batch.id) == len("batch_") + 32
    assert batch.expires_at == batch.created_at + 86400
    assert set(raw["request_counts"]) == {"total", "completed", "failed"}
    assert raw["metadata"] == {"ds_name": "Nightly"}


async def test_test_model_runs_free_with_the_fixed_reply(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    batch = await wait_for(c, (await submit(c, ds_lines(3), endpoint=TEST_URL)).id)
    assert batch.status == "completed" and batch.request_counts.completed == 3
    lines = (await c.files.content(batch.output_file_id)).text.splitlines()
    assert len(lines) == 3 and "This is a test result." in lines[0]
    assert batch.usage.input_tokens == 60 and batch.usage.output_tokens == 18
    assert batch.model_extra["cost"]["amount"] == 0
    assert batch.error_file_id is None


async def test_test_model_on_the_wrong_url_fails(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    lines = ds_lines(2)
    for line in lines:
        line["url"] = "/v1/chat/completions"
    batch = await wait_for(c, (await submit(c, lines)).id)
    assert batch.status == "failed"
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("mismatched_test_url", 1),
        ("mismatched_test_url", 2),
    ]


async def test_third_live_test_batch_is_429(lowtide_app: AppFactory) -> None:
    # With no engine running, batches stay in validating: live, so they count.
    app = await lowtide_app(api_only=True)
    alice, bob = app.client(ALICE), app.client(BOB)
    file = await alice.files.create(file=("t.jsonl", jsonl(ds_lines(1))), purpose="batch")
    for _ in range(2):
        await alice.batches.create(
            input_file_id=file.id, endpoint=TEST_URL, completion_window="24h"
        )
    with pytest.raises(openai.RateLimitError) as info:
        await alice.batches.create(
            input_file_id=file.id, endpoint=TEST_URL, completion_window="24h"
        )
    assert int(info.value.response.headers["retry-after"]) >= 1
    # The limit is per account, and only for the test model.
    bob_file = await bob.files.create(file=("t.jsonl", jsonl(ds_lines(1))), purpose="batch")
    await bob.batches.create(input_file_id=bob_file.id, endpoint=TEST_URL, completion_window="24h")
    await alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def test_create_rejects_bad_parameters(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    f = await c.files.create(file=("a.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        await c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/invalid/endpoint",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert info.value.code == "invalid_value" and info.value.param == "endpoint"
    assert "'/v1/chat/ds-test'" in info.value.message
    for window in ("1h", "48", "invalid", "", "337h", "15d", "0d"):
        with pytest.raises(openai.BadRequestError) as info:
            await c.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window=window,  # type: ignore[arg-type]
            )
        assert info.value.param == "completion_window"
    for window in ("24h", "7d", "336h", "14d"):
        made = await c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window=window,  # type: ignore[arg-type]
        )
        hours = int(window[:-1]) * (24 if window.endswith("d") else 1)
        assert made.expires_at == made.created_at + hours * 3600
    with pytest.raises(openai.BadRequestError) as info:
        await c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"tags": ["a"]},  # type: ignore[dict-item]
        )
    assert info.value.code == "invalid_type" and info.value.param == "metadata.tags"
    assert info.value.body["message"] == (  # type: ignore[index]
        "Invalid type for 'metadata.tags': expected a string, but got an array instead."
    )
    with pytest.raises(openai.BadRequestError) as info:
        await c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={f"k{i}": "v" for i in range(17)},
        )
    assert info.value.code == "invalid_value"


async def test_unknown_or_foreign_input_file_fails_the_batch(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    alice, bob = app.client(ALICE), app.client(BOB)
    foreign = await bob.files.create(
        file=("b.jsonl", jsonl([chat_line("a", "x")])), purpose="batch"
    )
    for file_id in ("file-batch-000000000000000000000000", foreign.id):
        batch = await alice.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        batch = await wait_for(alice, batch.id)
        assert batch.status == "failed"
        error = batch.errors.data[0]
        assert (error.code, error.param, error.line) == ("invalid_request", "input_file_id", None)
        assert error.message == (
            f"Cannot find file {file_id}, or it is not accessible to this account."
        )


async def test_retrieve_and_cancel_errors(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    alice, bob = app.client(ALICE), app.client(BOB)
    with pytest.raises(openai.NotFoundError) as info:
        await alice.batches.retrieve("batch_doesnotexist")
    assert "not found" in info.value.message
    batch = await wait_for(alice, (await submit(alice, ds_lines(1), endpoint=TEST_URL)).id)
    with pytest.raises(openai.NotFoundError):
        await bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await bob.batches.cancel(batch.id)
    with pytest.raises(openai.ConflictError) as info:
        await alice.batches.cancel(batch.id)
    assert info.value.body["message"] == (  # type: ignore[index]
        "Cannot cancel a batch with status 'completed'."
    )
    assert (await bob.batches.list()).data == []


async def test_list_batches_filters_and_pages(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    f1 = await c.files.create(file=("a.jsonl", jsonl(ds_lines(1))), purpose="batch")
    f2 = await c.files.create(file=("b.jsonl", jsonl(ds_lines(1))), purpose="batch")
    made = []
    for file, name in [(f1, "Nightly run"), (f2, "weekly"), (f1, "nightly 2")]:
        created = await c.batches.create(
            input_file_id=file.id,
            endpoint=TEST_URL,
            completion_window="24h",
            metadata={"ds_name": name},
        )
        made.append(created.id)
        await wait_for(c, made[-1])
    assert await ids(c.batches.list()) == made[::-1]
    page = await c.batches.list(limit=2)
    assert [b.id for b in page.data] == made[:0:-1] and page.has_more
    assert await ids(c.batches.list(limit=2)) == made[::-1]  # auto-pagination
    assert [b.id for b in (await c.batches.list(limit=2, after=made[1])).data] == [made[0]]
    named = await c.batches.list(extra_query={"ds_name": "NIGHTLY"})
    assert [b.id for b in named.data] == [made[2], made[0]]
    by_file = await c.batches.list(extra_query={"input_file_ids": f2.id})
    assert [b.id for b in by_file.data] == [made[1]]
    assert len((await c.batches.list(extra_query={"status": "completed,expired"})).data) == 3
    assert (await c.batches.list(extra_query={"status": "failed"})).data == []
    with pytest.raises(openai.BadRequestError):
        await c.batches.list(extra_query={"status": "nonsense"})
    after = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() + 3600))
    assert (await c.batches.list(extra_query={"create_after": after})).data == []
    assert len((await c.batches.list(extra_query={"create_before": after})).data) == 3
