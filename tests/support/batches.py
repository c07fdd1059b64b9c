"""What every tier builds its batches from: the two test accounts, the config that names them
and the fake backend, batch lines, and the check that each line ended exactly once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

ALICE = "sk-test-alice-000001"
BOB = "sk-test-bob-0000001"
MODEL = "fake-model"
TEST_MODEL = "batch-test-model"
TEST_URL = "/v1/chat/ds-test"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class HasBaseUrl(Protocol):
    """A fake upstream, in-process (``FakeUpstream``) or as a process (``harness.Upstream``)."""

    @property
    def base_url(self) -> str: ...


def config_toml(
    upstream: HasBaseUrl | None,
    *,
    max_concurrency: int = 16,
    extra: str = "",
    max_attempts: int = 5,
    timeout: float = 30.0,
    engine: Mapping[str, object] | None = None,
) -> str:
    """The test config: Alice's and Bob's keys, the fake backend (if any) serving ``MODEL``
    and ``renamed-model``, prices, and quick retries. ``engine`` sets (or overrides) keys of
    ``[engine]``; ``extra`` is appended as it is (a line before any table header lands in
    ``[engine]``)."""
    engine_keys = {
        "max_attempts": max_attempts,
        "retry_base_delay": 0.05,
        "retry_max_delay": 0.5,
        "lease_seconds": 10,
        **(engine or {}),
    }
    engine_toml = "".join(f"{key} = {value!r}\n" for key, value in engine_keys.items())
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
{engine_toml}{extra}
"""


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


def ds_lines(n: int, prefix: str = "t", content: str = "hello") -> list[dict[str, Any]]:
    """``n`` lines for the built-in test model, which answers without any backend."""
    return [
        chat_line(f"{prefix}{i}", f"{content} {i}", model=TEST_MODEL, url=TEST_URL)
        for i in range(n)
    ]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n").encode()


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return parse_jsonl(path.read_text(encoding="utf-8"))


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(jsonl(lines))
    return path


def assert_each_once(
    lines: list[dict[str, Any]], outputs: list[dict[str, Any]], errors: list[dict[str, Any]]
) -> None:
    """Every input custom_id appears exactly once across both result files."""
    seen = [r["custom_id"] for r in outputs + errors]
    assert len(seen) == len(set(seen)), "a custom_id appears twice"
    assert sorted(seen) == sorted(line["custom_id"] for line in lines)


def assert_billed_once(batch: Any, outputs: list[dict[str, Any]]) -> None:
    """The batch's usage is the sum of its output lines' usage: no line counted twice."""
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt, completion)
