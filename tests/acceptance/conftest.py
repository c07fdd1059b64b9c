"""Acceptance fixtures: the real ``lowtide serve`` process, the official ``openai`` SDK,
and a fake OpenAI-compatible upstream, all on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lowtide.testing.harness import Lowtide, Upstream

ALICE = "sk-test-alice-000001"
BOB = "sk-test-bob-0000001"
MODEL = "fake-model"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def config_toml(
    upstream: Upstream | None,
    *,
    max_concurrency: int = 16,
    extra: str = "",
    max_attempts: int = 5,
    timeout: float = 30.0,
) -> str:
    backend = ""
    if upstream is not None:
        backend = f"""
[[backends]]
name = "fake"
base_url = "{upstream.base_url}"
api_key = "EMPTY"
models = ["{MODEL}", "renamed-model"]
model_aliases = {{ "renamed-model" = "upstream-name" }}
max_concurrency = {max_concurrency}
timeout = {timeout}
"""
    return f"""
[[api_keys]]
key = "{ALICE}"
account = "alice"

[[api_keys]]
key = "{BOB}"
account = "bob"
{backend}
[models."{MODEL}"]
input_price = 0.8
output_price = 2.0
currency = "USD"

[billing]
batch_discount = 0.5

[engine]
max_attempts = {max_attempts}
retry_base_delay = 0.05
retry_max_delay = 0.5
lease_seconds = 10
{extra}
"""


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream("--seed", "7", log=tmp_path / "upstream.log")
    yield up
    up.stop()


ServerFactory = Callable[..., Lowtide]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[Lowtide] = []

    def make(
        upstream: Upstream | None = None, *, extra_args: tuple[str, ...] = (), **options: Any
    ) -> Lowtide:
        workdir = tmp_path / f"lowtide{len(started)}"
        workdir.mkdir()
        server = Lowtide(workdir, config_toml(upstream, **options), extra_args=extra_args)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def client(server: Lowtide, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def chat_line(
    custom_id: str,
    content: str,
    *,
    model: str = MODEL,
    url: str = "/v1/chat/completions",
    **body: Any,
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n").encode()


def submit(
    c: openai.OpenAI,
    lines: list[dict[str, Any]],
    *,
    endpoint: str = "/v1/chat/completions",
    **kwargs: Any,
) -> Any:
    f = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )


def wait_for(
    c: openai.OpenAI, batch_id: str, statuses: set[str] = TERMINAL, timeout: float = 60.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}: {batch}")
        time.sleep(0.1)


def read_results(c: openai.OpenAI, batch: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = c.files.content(batch.output_file_id).text if batch.output_file_id else ""
    err = c.files.content(batch.error_file_id).text if batch.error_file_id else ""
    return ([json.loads(x) for x in out.splitlines()], [json.loads(x) for x in err.splitlines()])


def assert_each_once(
    lines: list[dict[str, Any]], outputs: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> None:
    """Every input custom_id appears exactly once across both result files."""
    seen = [r["custom_id"] for r in outputs + errors]
    assert len(seen) == len(set(seen)), "a custom_id appears twice"
    assert sorted(seen) == sorted(line["custom_id"] for line in lines)
