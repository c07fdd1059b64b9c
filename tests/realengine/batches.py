"""The ``openai`` SDK calls and the /metrics scrape that the serve tests make."""

from __future__ import annotations

import time
from typing import Any

import httpx2 as httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from lowtide.testing.harness import Lowtide
from tests.realengine.conftest import KEY
from tests.support.batches import TERMINAL, jsonl, parse_jsonl

WAIT = 120.0  # seconds: a deadline against hangs only; the batches take a few seconds


def client(server: Lowtide) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def submit(c: openai.OpenAI, lines: list[dict[str, Any]]) -> Any:
    upload = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait_for(c: openai.OpenAI, batch_id: str) -> Any:
    deadline = time.monotonic() + WAIT
    while (batch := c.batches.retrieve(batch_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}: {batch}"
        time.sleep(0.1)
    return batch


def wait_until_completed(c: openai.OpenAI, batch_id: str, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while c.batches.retrieve(batch_id).request_counts.completed < count:
        assert time.monotonic() < deadline, f"fewer than {count} lines completed"
        time.sleep(0.05)


def read_results(c: openai.OpenAI, batch: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = c.files.content(batch.output_file_id).text if batch.output_file_id else ""
    err = c.files.content(batch.error_file_id).text if batch.error_file_id else ""
    return parse_jsonl(out), parse_jsonl(err)


def metric(server: Lowtide, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    text = httpx.get(server.url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
