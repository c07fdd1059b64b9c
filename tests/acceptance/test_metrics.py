"""``lowtide serve`` as a process: JSON logs on its stderr, and /metrics on its port.

What the counters say about a batch is tested in tests/inprocess/test_metrics.py."""

from __future__ import annotations

import json

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ALICE, ServerFactory, chat_line, client, submit, wait_for


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


@pytest.mark.measure_children
def test_json_logs_and_metrics_of_a_served_batch(make_server: ServerFactory) -> None:
    server = make_server(extra_args=("--log-format", "json"))
    c = client(server)
    lines = [
        chat_line(f"t{i}", "secret prompt text", model="batch-test-model", url="/v1/chat/ds-test")
        for i in range(3)
    ]
    batch = wait_for(c, submit(c, lines, endpoint="/v1/chat/ds-test").id)
    samples = scrape(server.url)
    assert samples["lowtide_batches_created_total", ()] == 1
    assert samples["lowtide_batches_finished_total", (("status", "completed"),)] == 1
    assert samples["lowtide_batches", (("status", "completed"),)] == 1
    assert batch.request_counts.completed == 3
    server.stop()
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert entries, server.log()
    statuses = [e["status"] for e in entries if e.get("action") == "batch_status"]
    assert statuses[0] == "validating" and statuses[-1] == "completed"
    assert ALICE not in server.log() and "secret prompt text" not in server.log()
