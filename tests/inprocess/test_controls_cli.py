"""The batch controls from the command line, in this process: ``lowtide batch submit`` with
the controls, ``pause``, ``resume``, ``retry``, ``estimate``, ``download --partial``, and the
server's pace in ``batch wait``.

The commands build a synchronous ``openai.OpenAI``; here its HTTP client reaches the app on
this test's event loop through ``AppTransport`` (the command runs on a thread, the app on the
loop), so no port is opened, as everywhere in this tier.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from click.testing import CliRunner, Result

from lowtide.cli import client_common
from lowtide.cli.commands import cli
from lowtide.cli.progress import BatchProgress, Counts
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import ALICE, chat_line, jsonl, parse_jsonl

from .conftest import BASE, App, AppFactory, eventually, read_results, submit, wait_for


class AppTransport(httpx.BaseTransport):
    """A synchronous transport to the ASGI app running on ``loop`` (another thread's)."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.inner = httpx.ASGITransport(app=app.server.app)
        self.loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def call() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self.inner.handle_async_request(forwarded)
            content = await response.aread()
            return response.status_code, list(response.headers.raw), content

        status, headers, content = asyncio.run_coroutine_threadsafe(call(), self.loop).result()
        return httpx.Response(status, headers=headers, content=content, request=request)


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """``await run_cli(app, "batch", "pause", id)``: the command on a thread, against ``app``."""
    monkeypatch.chdir(tmp_path)

    async def run(app: App, *args: str) -> Result:
        loop = asyncio.get_running_loop()

        def make_client(base_url: str, api_key: str | None) -> openai.OpenAI:
            http = httpx.Client(transport=AppTransport(app, loop), base_url=BASE)
            return openai.OpenAI(
                base_url=BASE + "/v1", api_key=ALICE, http_client=http, max_retries=0
            )

        monkeypatch.setattr(client_common, "_make_client", make_client)
        runner = CliRunner()
        return await asyncio.to_thread(runner.invoke, cli, list(args), catch_exceptions=False)

    yield run


def lines_for(n: int, prefix: str = "c", **marks: str) -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"{marks.get(str(i), '')}{prefix} q {i}") for i in range(n)]


async def test_submit_with_controls_then_pause_resume_and_partial(
    lowtide_app: AppFactory, upstream: FakeUpstream, run_cli: Any, tmp_path: Path
) -> None:
    upstream.configure(latency=0.02)
    app = await lowtide_app(upstream, max_concurrency=1)
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines_for(40)))
    made = await run_cli(
        app, "batch", "submit", "in.jsonl", "--priority", "4", "--max-error-rate", "0.5"
    )
    assert made.exit_code == 0, made.output
    batch_id = made.stdout.strip()
    c = app.client()
    batch = await c.batches.retrieve(batch_id)
    extra = batch.model_extra or {}
    assert (extra["priority"], extra["max_error_rate"], extra["max_cost"]) == (4, 0.5, None)
    await eventually(
        lambda: app.db("SELECT completed FROM batches WHERE id = ?", batch_id)[0][0] >= 3,
        "some lines done",
    )
    paused = await run_cli(app, "batch", "pause", batch_id, "--json")
    assert paused.exit_code == 0 and json.loads(paused.stdout)["paused_at"] is not None
    shown = await run_cli(app, "batch", "get", batch_id)
    assert "paused:         since" in shown.stdout and "priority:       4" in shown.stdout
    partial = await run_cli(app, "batch", "download", batch_id, "--partial", "-o", "so_far.jsonl")
    assert partial.exit_code == 0, partial.output
    so_far = parse_jsonl((tmp_path / "so_far.jsonl").read_text())
    assert len(so_far) >= 3 and (tmp_path / "so_far.errors.jsonl").read_text() == ""
    assert [line["custom_id"] for line in so_far] == sorted(
        (line["custom_id"] for line in so_far), key=lambda cid: int(cid.split("-")[1])
    )
    resumed = await run_cli(app, "batch", "resume", batch_id)
    assert resumed.stdout.strip() == f"{batch_id} resumed"
    assert (await wait_for(c, batch_id)).status == "completed"
    refused = await run_cli(app, "batch", "pause", batch_id)
    assert refused.exit_code == 1 and "409" in refused.stderr


async def test_retry_of_some_codes(
    lowtide_app: AppFactory, upstream: FakeUpstream, run_cli: Any
) -> None:
    app = await lowtide_app(upstream)
    c = app.client()
    lines = lines_for(6, **{"1": "FAIL400 ", "4": "FAIL400 "})
    source = await wait_for(c, (await submit(c, lines)).id)
    assert source.request_counts.failed == 2
    upstream.configure(fail_contains="NEVER")
    made = await run_cli(app, "batch", "retry", source.id, "--code", "context_length_exceeded")
    assert made.exit_code == 0, made.output
    new = await wait_for(c, made.stdout.strip())
    assert new.metadata == {"retry_of": source.id} and new.request_counts.completed == 2
    outputs, _ = await read_results(c, new)
    assert [o["custom_id"] for o in outputs] == ["c-1", "c-4"]
    none = await run_cli(app, "batch", "retry", source.id, "--code", "upstream_timeout")
    assert none.exit_code == 1 and "no failed lines" in none.stderr


async def test_estimate_prints_the_figures_and_deletes_its_upload(
    lowtide_app: AppFactory, upstream: FakeUpstream, run_cli: Any, tmp_path: Path
) -> None:
    app = await lowtide_app(upstream)
    lines = [chat_line(f"e-{i}", "what is two plus two", max_tokens=10) for i in range(5)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    shown = await run_cli(app, "batch", "estimate", "in.jsonl")
    assert shown.exit_code == 0, shown.output
    assert "lines:            5" in shown.stdout and "at most 50" in shown.stdout
    assert "estimated from characters" in shown.stdout
    assert [f.id async for f in app.client().files.list()] == []  # the upload is gone
    kept = await run_cli(app, "batch", "estimate", "in.jsonl", "--keep", "--json")
    assert json.loads(kept.stdout)["output_tokens_max"] == 50
    assert len([f.id async for f in app.client().files.list()]) == 1
    bad = [*lines, chat_line("e-0", "again")]
    (tmp_path / "bad.jsonl").write_bytes(jsonl(bad))
    refused = await run_cli(app, "batch", "estimate", "bad.jsonl")
    assert refused.exit_code == 3 and "duplicate_custom_id" in refused.stdout


def test_the_progress_line_takes_the_servers_pace() -> None:
    progress = BatchProgress("batch_x", plain_every=0)
    counts = Counts("in_progress", 100, 0, 1000, rate=2.0, left=450.0)
    assert progress.plain_line(counts).endswith("2.0/s, ETA 7m30s")
    assert progress.plain_line(Counts("in_progress", 100, 0, 1000)).endswith("-/s, ETA -")
