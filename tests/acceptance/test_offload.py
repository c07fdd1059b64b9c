"""Offload end to end with real processes: a lowtide whose batch backend is a second lowtide,
which runs the lines on the fake upstream. A batch lands entirely through the upstream lowtide,
and its result files, usage and cost are those of the same file run on the fake upstream
directly (by the upstream lowtide itself)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from lowtide.backends.batch_api import BatchApi
from lowtide.settings import BackendSettings
from lowtide.testing.children import unmeasured_env
from lowtide.testing.harness import Lowtide, Upstream
from tests.support import commands
from tests.support.batches import ALICE, MODEL, assert_each_once, chat_line, jsonl
from tests.support.offload import batch_backend, comparable

from .conftest import ServerFactory, client, read_results

#: Polls of the upstream lowtide every 0.2 s per chunk: more than its default retrieve limit.
GENEROUS = "\n[account_defaults]\nretrieve_per_minute = 100000\nlist_per_minute = 100000\n"


def submit(c: openai.OpenAI, lines: list[dict[str, Any]], window: str) -> Any:
    f = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )


def wait_for(c: openai.OpenAI, batch_id: str, patience: float = 300.0) -> Any:
    import time

    deadline = time.monotonic() + patience
    while True:
        batch = c.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.25)


@pytest.mark.slow
def test_a_batch_lands_entirely_through_an_upstream_lowtide(
    make_server: ServerFactory, upstream: Upstream
) -> None:
    inner: Lowtide = make_server(upstream, extra=GENEROUS, max_concurrency=64)
    hosted = batch_backend(
        inner, api_key=ALICE, limits="dashscope", max_lines_per_chunk=500, poll_interval=0.2
    )
    outer: Lowtide = make_server(None, extra=GENEROUS + hosted)
    lines = [chat_line(f"r{i}", f"offloaded line {i}") for i in range(2000)]
    for i in range(0, 2000, 97):
        lines[i] = chat_line(f"r{i}", f"offloaded line {i} FAIL400")

    oc = client(outer)
    batch = wait_for(oc, submit(oc, lines, "48h").id)
    assert batch.status == "completed", batch
    out, err = read_results(oc, batch)
    assert_each_once(lines, out, err)
    assert batch.request_counts.model_dump() == {"total": 2000, "completed": 1979, "failed": 21}
    offloaded = batch.model_extra["offloaded"]
    assert offloaded["by_backend"] == {"hosted": 2000} and offloaded["running"] == 0
    # Four chunks of 500 lines, one batch each on the upstream lowtide, all ended there.
    inner_batches = list(client(inner).batches.list(limit=100))
    assert sorted(b.request_counts.total for b in inner_batches) == [500] * 4
    assert {b.metadata["lowtide_batch"] for b in inner_batches} == {batch.id}

    # The same file run on the fake upstream directly, by the upstream lowtide.
    ic = client(inner)
    local = wait_for(ic, submit(ic, lines, "24h").id)
    local_out, local_err = read_results(ic, local)
    assert comparable(out) == comparable(local_out)
    assert comparable(err) == comparable(local_err)
    assert batch.usage == local.usage
    assert batch.model_extra["cost"] == local.model_extra["cost"]
    # Each line ran on the fake upstream twice: once per run, never more.
    per_key = upstream.stats(per_key=True)["per_key"]
    assert len(per_key) == 2000 and set(per_key.values()) == {2}
    assert MODEL in {b.model for b in inner_batches}
    assert {b.metadata["ds_name"] for b in inner_batches} == {
        f"lowtide {b.metadata['lowtide_chunk']}" for b in inner_batches
    }


def test_lowtide_as_an_upstream_honours_the_idempotency_key_and_is_searchable(
    make_server: ServerFactory,
) -> None:
    """What makes a create exactly once against another lowtide: the same key answers the
    first batch, and a batch is found by the chunk id in its metadata."""
    inner: Lowtide = make_server(None)

    async def calls() -> tuple[str, str, str | None, str | None]:
        api = BatchApi(
            BackendSettings(
                name="inner", kind="batch", base_url=inner.base_url, api_key=ALICE, models=["m"]
            )
        )
        try:
            line = chat_line("1", "hi", model="batch-test-model", url="/v1/chat/ds-test")
            file_id = await api.upload("lowtide-chunk_x.jsonl", jsonl([line]))
            first = await api.create(file_id, "/v1/chat/ds-test", "24h", "chunk_x", "batch_y")
            again = await api.create(file_id, "/v1/chat/ds-test", "24h", "chunk_x", "batch_y")
            found = await api.find_batch("chunk_x", first.created_at)
            named = await api.find_file("lowtide-chunk_x.jsonl", first.created_at)
            return first.id, again.id, found.id if found else None, named
        finally:
            await api.close()

    first, again, found, named = asyncio.run(calls())
    assert first == again == found and named is not None
    assert len(list(client(inner).batches.list())) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_offload_chaos_kills_lose_repeat_and_create_twice_nothing(tmp_path: Path) -> None:
    """The small version of bench/offload_chaos.py, run as a user runs it."""
    root = Path(__file__).resolve().parents[2]
    proc = commands.run(
        [
            sys.executable,
            str(root / "bench" / "offload_chaos.py"),
            *("--lines", "300", "--chunk", "30", "--kills", "4", "--workdir", str(tmp_path)),
            "--json",
        ],
        timeout=540,
        cwd=root,
        env=unmeasured_env(),
    )
    assert proc.stdout, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["problems"] == [] and r["status"] == "completed"
    assert (r["lost"], r["duplicated"], r["double_billed"]) == (0, 0, 0)
    assert r["kills"] == 4 and set(r["kills_by_aim"]) == {"upload", "create", "poll", "download"}
    assert r["chunks_created_twice"] == r["files_uploaded_twice"] == 0
    assert r["lines_run_twice_upstream"] == 0
    assert r["upstream_batches"] == r["chunks"] == 10
    assert r["ok"]
