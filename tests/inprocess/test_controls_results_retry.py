"""Results so far and the retry of failed lines through the ``openai`` SDK's generic ``get`` and
``post`` (docs/extensions.md): the lines recorded while a batch runs, the cursor, the same
bytes as the result files once it ended, and a new batch of the failed lines, made once."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import openai
import pytest
from openai.types import Batch

from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import TEST_URL, chat_line, ds_lines, jsonl, parse_jsonl

from .conftest import App, AppFactory, eventually, read_results, submit, wait_for


async def results(c: openai.AsyncOpenAI, batch_id: str, **params: Any) -> httpx.Response:
    return await c.get(
        f"/batches/{batch_id}/results", cast_to=httpx.Response, options={"params": params}
    )


def ids_of(response: httpx.Response) -> list[str]:
    return [line["custom_id"] for line in parse_jsonl(response.text)]


def marks(response: httpx.Response) -> tuple[int, int]:
    headers = response.headers
    return int(headers["lowtide-last-line"]), int(headers["lowtide-done-through"])


async def retry(c: openai.AsyncOpenAI, batch_id: str, **body: Any) -> Batch:
    return await c.post(f"/batches/{batch_id}/retry", cast_to=Batch, body=body or None)


def mixed_lines() -> list[dict[str, Any]]:
    """Ten lines: every third refused with a 400, the others answered."""
    return [chat_line(f"m-{i}", f"{'FAIL400 ' if i % 3 == 0 else ''}line {i}") for i in range(10)]


async def test_results_so_far_while_the_batch_runs(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    # The hanging line times out every 2 s and is tried again, until the cancel ends it.
    upstream.configure(hang_contains="HANG")
    app = await lowtide_app(upstream, timeout=2.0, max_attempts=100)
    c = app.client()
    lines = [
        chat_line(f"r-{i}", f"{'HANG ' if i == 3 else ''}{'FAIL400 ' if i == 5 else ''}q {i}")
        for i in range(1, 8)
    ]
    batch = await submit(c, lines)
    await eventually(
        lambda: app.db("SELECT completed + failed FROM batches WHERE id = ?", batch.id)[0][0] == 6,
        "every line but the hanging one ended",
    )
    every = await results(c, batch.id)
    assert every.headers["content-type"].startswith("application/jsonl")
    assert ids_of(every) == ["r-1", "r-2", "r-4", "r-5", "r-6", "r-7"]  # line order, line 3 not yet
    assert marks(every) == (7, 2)  # all up to line 7; every line up to 2 has its result for good
    assert ids_of(await results(c, batch.id, kind="output")) == ["r-1", "r-2", "r-4", "r-6", "r-7"]
    errors = await results(c, batch.id, kind="errors")
    assert ids_of(errors) == ["r-5"] and marks(errors) == (5, 2)
    assert ids_of(await results(c, batch.id, after=4)) == ["r-5", "r-6", "r-7"]
    # Following a running batch without a line twice: contiguous, and after = the last line.
    first = await results(c, batch.id, contiguous="true")
    assert ids_of(first) == ["r-1", "r-2"] and marks(first) == (2, 2)
    again = await results(c, batch.id, contiguous="true", after=2)
    assert ids_of(again) == [] and marks(again) == (2, 2)
    await c.batches.cancel(batch.id)
    ended = await wait_for(c, batch.id)
    rest = await results(c, batch.id, contiguous="true", after=2)
    assert ids_of(rest) == ["r-3", "r-4", "r-5", "r-6", "r-7"] and marks(rest) == (7, 7)
    assert parse_jsonl(rest.text)[0]["error"]["code"] == "batch_cancelled"
    assert ended.status == "cancelled"


async def test_on_a_finished_batch_the_results_are_the_files(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    c = (await lowtide_app(upstream)).client()
    batch = await wait_for(c, (await submit(c, mixed_lines())).id)
    output = (await c.files.content(batch.output_file_id)).content
    error = (await c.files.content(batch.error_file_id)).content
    assert (await results(c, batch.id, kind="output")).content == output
    assert (await results(c, batch.id, kind="errors")).content == error
    both = await results(c, batch.id)
    assert sorted(both.content.splitlines()) == sorted((output + error).splitlines())
    assert ids_of(both) == [f"m-{i}" for i in range(10)]
    assert marks(both) == (10, 10)


async def test_results_refuse_bad_parameters_and_foreign_batches(
    lowtide_app: AppFactory,
) -> None:
    app = await lowtide_app()
    c = app.client()
    batch = await submit(c, ds_lines(2), endpoint=TEST_URL)
    for params, param in (
        ({"kind": "both"}, "kind"),
        ({"after": "-1"}, "after"),
        ({"contiguous": "yes"}, "contiguous"),
    ):
        with pytest.raises(openai.BadRequestError) as raised:
            await results(c, batch.id, **params)
        assert raised.value.body["param"] == param  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await results(app.client("sk-test-bob-0000001"), batch.id)


async def test_retry_makes_a_batch_of_the_failed_lines(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream)
    c = app.client()
    lines = mixed_lines()
    source = await submit(c, lines, metadata={"ds_name": "nightly"}, extra_body={"priority": 3})
    source = await wait_for(c, source.id)
    upstream.configure(fail_contains="NEVER")  # the backend now takes those lines
    new = await retry(c, source.id)
    assert new.status == "validating" and new.endpoint == source.endpoint
    assert new.metadata == {"ds_name": "nightly", "retry_of": source.id}
    assert (new.model_extra or {})["priority"] == 3
    assert new.completion_window == source.completion_window
    uploaded = await c.files.retrieve(new.input_file_id)
    assert uploaded.purpose == "batch" and uploaded.filename == f"{source.id}_retry.jsonl"
    # Its input: the failed lines as they were in the original file, byte for byte.
    original = jsonl(lines).splitlines(keepends=True)
    assert (await c.files.content(new.input_file_id)).content == b"".join(
        original[i] for i in (0, 3, 6, 9)
    )
    done = await wait_for(c, new.id)
    outputs, errors = await read_results(c, done)
    assert [o["custom_id"] for o in outputs] == ["m-0", "m-3", "m-6", "m-9"] and errors == []


async def test_retry_once_per_idempotency_key(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream)
    c = app.client()
    source = await wait_for(c, (await submit(c, mixed_lines())).id)
    key = {"Idempotency-Key": "retry-nightly-1"}
    first = await c.post(f"/batches/{source.id}/retry", cast_to=Batch, options={"headers": key})
    again = await c.post(f"/batches/{source.id}/retry", cast_to=Batch, options={"headers": key})
    assert again.id == first.id and again.created_at == first.created_at
    retried = app.db("SELECT COUNT(*) FROM batches WHERE metadata LIKE ?", f"%{source.id}%")
    assert retried == [(1,)]
    with pytest.raises(openai.ConflictError):  # the same key with other parameters
        await c.post(
            f"/batches/{source.id}/retry",
            cast_to=Batch,
            body={"codes": ["upstream_timeout"]},
            options={"headers": key},
        )


async def test_retry_of_some_codes_and_the_refusals(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(hang_contains="HANG")
    app = await lowtide_app(upstream, timeout=2.0, max_attempts=100)
    c = app.client()
    lines = [*mixed_lines(), chat_line("hang", "HANG")]
    source = await submit(c, lines)
    with pytest.raises(openai.ConflictError) as raised:  # not finished yet
        await retry(c, source.id)
    assert "in_progress" in raised.value.message or "validating" in raised.value.message
    await eventually(
        lambda: (
            app.db("SELECT completed + failed FROM batches WHERE id = ?", source.id)[0][0] == 10
        ),
        "every line but the hanging one ended",
    )
    await c.batches.cancel(source.id)
    source = await wait_for(c, source.id)
    new = await retry(c, source.id, codes=["batch_cancelled"])
    assert (await c.files.content(new.input_file_id)).content == jsonl(lines).splitlines(
        keepends=True
    )[10]
    with pytest.raises(openai.ConflictError) as raised:
        await retry(c, source.id, codes=["upstream_timeout"])
    assert raised.value.body["code"] == "nothing_to_retry"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        await retry(c, source.id, codes="batch_cancelled")
    assert raised.value.body["param"] == "codes"  # type: ignore[index]
    clean = await wait_for(c, (await submit(c, ds_lines(2), endpoint=TEST_URL)).id)
    with pytest.raises(openai.ConflictError) as raised:
        await retry(c, clean.id)
    assert raised.value.body["code"] == "nothing_to_retry"  # type: ignore[index]


async def test_retry_needs_the_input_file(lowtide_app: AppFactory, upstream: FakeUpstream) -> None:
    app: App = await lowtide_app(upstream)
    c = app.client()
    source = await wait_for(c, (await submit(c, mixed_lines())).id)
    await c.files.delete(source.input_file_id)
    with pytest.raises(openai.ConflictError) as raised:
        await retry(c, source.id)
    assert raised.value.body["code"] == "input_file_deleted"  # type: ignore[index]
