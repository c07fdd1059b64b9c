"""/metrics in the Prometheus format agrees with the batches it counted."""

from __future__ import annotations

import json

import httpx2 as httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ALICE, chat_line, client, submit, wait_for


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


def test_counters_agree_with_the_batch(make_server, upstream):
    upstream.configure(latency=0.02, rate_429=0.05, retry_after=0.1)
    server = make_server(upstream, max_concurrency=4, max_attempts=30)
    c = client(server)
    lines = [chat_line(f"m{i}", f"metrics {i}") for i in range(120)]
    lines.append(chat_line("bad", "FAIL400 here"))
    batch = submit(c, lines)
    during = scrape(server.url)
    assert total(during, "lowtide_backend_concurrency_limit", backend="fake") == 4
    assert total(during, "lowtide_requests_in_flight", backend="fake") <= 4
    assert total(during, "lowtide_lines_pending") > 0
    batch = wait_for(c, batch.id, timeout=120)
    after = scrape(server.url)
    model = {"backend": "fake", "model": "fake-model"}
    succeeded = total(after, "lowtide_requests_succeeded_total", **model)
    failed = total(after, "lowtide_requests_failed_total", **model)
    retried = total(after, "lowtide_requests_retried_total", **model)
    dispatched = total(after, "lowtide_requests_dispatched_total", **model)
    assert succeeded == batch.request_counts.completed == 120
    assert failed == batch.request_counts.failed == 1
    assert dispatched == succeeded + failed + retried
    assert total(after, "lowtide_tokens_total", direction="input") == batch.usage.input_tokens
    assert total(after, "lowtide_tokens_total", direction="output") == batch.usage.output_tokens
    assert total(after, "lowtide_upstream_rate_limited_total") == upstream.stats()["rate_limited"]
    assert total(after, "lowtide_upstream_latency_seconds_count", **model) == dispatched
    assert total(after, "lowtide_batches_finished_total", status="completed") == 1
    assert total(after, "lowtide_batches_created_total") == 1
    assert total(after, "lowtide_batches", status="completed") == 1
    assert total(after, "lowtide_batches", status="in_progress") == 0
    assert total(after, "lowtide_lines_pending") == 0
    assert total(after, "lowtide_validation_seconds_count") == 1
    assert total(after, "lowtide_finalization_seconds_count") == 1


def test_json_logs_carry_events_and_never_keys(make_server):
    server = make_server(extra_args=("--log-format", "json"))
    c = client(server)
    lines = [
        chat_line(f"t{i}", "secret prompt text", model="batch-test-model", url="/v1/chat/ds-test")
        for i in range(3)
    ]
    wait_for(c, submit(c, lines, endpoint="/v1/chat/ds-test").id)
    server.stop()
    entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert entries, server.log()
    statuses = [e["status"] for e in entries if e.get("action") == "batch_status"]
    assert statuses[0] == "validating" and statuses[-1] == "completed"
    assert ALICE not in server.log() and "secret prompt text" not in server.log()
