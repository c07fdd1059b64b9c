"""/metrics in the Prometheus format agrees with the batches it counted.

The counters live in the process's registry, which every in-process server of the test run
shares: a test compares what they gained while its batch ran (``after - before``)."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from lowtide import errors
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import chat_line

from .conftest import App, AppFactory, submit, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: App) -> Samples:
    text = (await app.http.get("/metrics")).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((k, v) in sample_labels for k, v in labels.items())
    )


async def test_counters_agree_with_the_batch(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.02, rate_429=0.05, retry_after=0.1)
    app = await lowtide_app(upstream, max_concurrency=4, max_attempts=30)
    c = app.client()
    before = await scrape(app)

    def gained(after: Samples, name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    lines = [chat_line(f"m{i}", f"metrics {i}") for i in range(120)]
    lines.append(chat_line("bad", "FAIL400 here"))
    batch = await submit(c, lines)
    # 121 lines, 4 at a time, 20 ms each: in progress for 0.6 s at least.
    await wait_for(c, batch.id, {"in_progress"})
    during = await scrape(app)
    assert total(during, "lowtide_backend_concurrency_limit", backend="fake") == 4
    assert total(during, "lowtide_requests_in_flight", backend="fake") <= 4
    assert total(during, "lowtide_lines_pending") > 0
    assert total(during, "lowtide_batches", status="in_progress") == 1
    batch = await wait_for(c, batch.id, patience=120)
    after = await scrape(app)
    model = {"backend": "fake", "model": "fake-model"}
    succeeded = gained(after, "lowtide_requests_succeeded_total", **model)
    failed = gained(after, "lowtide_requests_failed_total", **model)
    retried = gained(after, "lowtide_requests_retried_total", **model)
    dispatched = gained(after, "lowtide_requests_dispatched_total", **model)
    assert succeeded == batch.request_counts.completed == 120
    assert failed == batch.request_counts.failed == 1
    assert dispatched == succeeded + failed + retried
    assert retried == upstream.stats()["rate_limited"] > 0
    assert gained(after, "lowtide_tokens_total", direction="input") == batch.usage.input_tokens
    assert gained(after, "lowtide_tokens_total", direction="output") == batch.usage.output_tokens
    assert gained(after, "lowtide_upstream_rate_limited_total") == upstream.stats()["rate_limited"]
    assert gained(after, "lowtide_upstream_latency_seconds_count", **model) == dispatched
    assert gained(after, "lowtide_batches_finished_total", status="completed") == 1
    assert gained(after, "lowtide_batches_created_total") == 1
    # The gauges read from this server's own database.
    assert total(after, "lowtide_batches", status="completed") == 1
    assert total(after, "lowtide_batches", status="in_progress") == 0
    assert total(after, "lowtide_lines_pending") == 0
    assert gained(after, "lowtide_validation_seconds_count") == 1
    assert gained(after, "lowtide_finalization_seconds_count") == 1


class _BrieflyUnreadable:
    """The engine's object store, whose first ``failures`` range reads fail: a short outage."""

    def __init__(self, blobs: Any, failures: int) -> None:
        self._blobs, self.failures = blobs, failures

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        if self.failures > 0:
            self.failures -= 1
            raise errors.StorageError("the object store is briefly unreachable")
        data: bytes = await self._blobs.read_range(key, offset, length)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


async def test_lines_given_back_unsent_count_as_no_attempt(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    # A line whose input cannot be read during a short outage goes back to pending unsent,
    # spending no attempt: it is neither dispatched nor retried, so that every attempt sent
    # is still one of succeeded, failed or retried.
    app = await lowtide_app(upstream, max_concurrency=2)
    engine = app.server.engine
    assert engine is not None
    outage = engine.dispatcher.blobs = _BrieflyUnreadable(engine.dispatcher.blobs, failures=3)
    before = await scrape(app)
    c = app.client()
    batch = await submit(c, [chat_line(f"u{i}", f"unread {i}") for i in range(4)])
    batch = await wait_for(c, batch.id, patience=120)
    after = await scrape(app)
    assert outage.failures == 0  # the outage happened
    assert batch.request_counts is not None and batch.request_counts.completed == 4

    def gained(name: str) -> float:
        model = {"backend": "fake", "model": "fake-model"}
        return total(after, name, **model) - total(before, name, **model)

    assert (
        total(after, "lowtide_input_read_failures_total")
        - total(before, "lowtide_input_read_failures_total")
        == 3
    )
    assert gained("lowtide_requests_dispatched_total") == 4 == upstream.stats()["requests"]
    assert gained("lowtide_requests_succeeded_total") == 4
    assert gained("lowtide_requests_retried_total") == 0
