"""What the offload tests of every tier share: a batch backend's config block, a submit with a
window of one's choosing, result lines with what differs from run to run taken out, and the
lines a fake Batch API ran."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

import openai

from tests.support.batches import MODEL, TERMINAL, jsonl


class HasBaseUrl(Protocol):
    @property
    def base_url(self) -> str: ...


def batch_backend(
    api: HasBaseUrl, *, name: str = "hosted", api_key: str = "EMPTY", **keys: Any
) -> str:
    """A ``[[backends]]`` block of kind ``batch`` serving ``MODEL`` from ``api``, polled every
    50 ms, with a margin of a minute (``keys`` add or change keys)."""
    settings: dict[str, Any] = {"poll_interval": 0.05, "deadline_margin": 60, **keys}
    lines = "".join(f"{key} = {_toml(value)}\n" for key, value in settings.items())
    return f"""
[[backends]]
name = "{name}"
kind = "batch"
base_url = "{api.base_url}"
api_key = "{api_key}"
models = ["{MODEL}"]
{lines}"""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


async def submit(c: openai.AsyncOpenAI, lines: list[dict[str, Any]], window: str = "48h") -> Any:
    """A batch of ``lines`` with ``window`` (48h by default: room for a 24h upstream window)."""
    f = await c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return await c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )


async def wait_slowly(c: openai.AsyncOpenAI, batch_id: str, patience: float = 60.0) -> Any:
    """Poll every quarter of a second until the batch ends (a batch that runs for tens of
    seconds would otherwise hit the retrieve rate limit); the deadline only turns a hang
    into a failure."""
    deadline = time.monotonic() + patience
    while True:
        batch = await c.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}: {batch}")
        await asyncio.sleep(0.25)


def comparable(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Result lines without what differs between two runs of one file: the line's id (from
    the batch id), the request id, and the answer's own id and time."""
    found = []
    for line in results:
        line = {**line, "id": None}
        response = line.get("response")
        if isinstance(response, dict):
            body = response.get("body")
            if isinstance(body, dict):
                body = {k: v for k, v in body.items() if k not in ("id", "created")}
            line["response"] = {**response, "request_id": None, "body": body}
        found.append(line)
    return sorted(found, key=lambda r: str(r["custom_id"]))


def upstream_keys(api: Any) -> dict[str, int]:
    """How many times each line (by its content) ran upstream, on an in-process fake."""
    return dict(api.stats(per_key=True)["per_key"])
