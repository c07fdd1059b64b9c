"""The dispatcher sends each batch in its own send order (lines that share a prompt prefix
together), one claim statement per batch per round, earliest deadline first: a batch that
arrives with an earlier deadline while another is half way through its groups is served at
once, never after the other's groups. On SQLite and PostgreSQL (the ``store`` fixture), with
the real validator, blob store, router, result sink and dispatcher; the backend is the built-in
test model, recording what it is sent."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from lowtide.backends.base import Reply
from lowtide.backends.test_model import TestModelBackend
from lowtide.blobs.local import LocalBlobStore
from lowtide.domain.records import BatchRecord, FileRecord, Pricing
from lowtide.domain.validation import RequestLine, Validator
from lowtide.engine import outcomes
from lowtide.engine.dispatcher import Dispatcher
from lowtide.engine.router import Router
from lowtide.engine.sink import ResultSink
from lowtide.store import Store

NOW = int(time.time())
CEILING = 1  # one request at a time: the backend sees them exactly in the order sent
ENDPOINT = "/v1/chat/completions"


class Recording(TestModelBackend):
    """The built-in test model, noting the marker of each request it is sent, in order; a hook
    may run before the n-th answer while every request waits (the gate is shut)."""

    name = "recording"
    max_concurrency = CEILING

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.hooks: dict[int, Callable[[], Any]] = {}

    async def send(self, path: str, body: bytes) -> Reply:
        self.sent.append(orjson.loads(body)["messages"][-1]["content"])
        hook = self.hooks.pop(len(self.sent), None)
        if hook is not None:
            self.gate.clear()
            await hook()
            self.gate.set()
        await self.gate.wait()
        return await super().send(path, body)


def file_of(name: str, n: int, rng: random.Random) -> bytes:
    """A shuffled file of ``n`` lines sharing 3 long system prompts; each line's question is
    its marker ``<name>-<line>``."""
    systems = [f"{name} system {k}. " + "context " * 300 for k in range(3)]
    lines = []
    for i in range(1, n + 1):
        messages = [
            {"role": "system", "content": systems[rng.randrange(3)]},
            {"role": "user", "content": f"{name}-{i}"},
        ]
        body = {"model": "m", "messages": messages, "max_tokens": 8}
        lines.append({"custom_id": f"c{i}", "method": "POST", "url": ENDPOINT, "body": body})
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


async def add_batch(
    store: Store, blobs: LocalBlobStore, name: str, content: bytes, expires_at: int
) -> list[RequestLine]:
    """Upload ``content``, create the batch and validate it (the real validator's order)."""
    key = f"inputs/file-{name}"
    async with blobs.writer(key) as w:
        await w.write(content)
    await store.create_file(
        FileRecord(f"file-{name}", "alice", "batch", f"{name}.jsonl", len(content), NOW, key)
    )
    record = BatchRecord(
        id=f"batch_{name}",
        account="alice",
        endpoint=ENDPOINT,
        input_file_id=f"file-{name}",
        completion_window="24h",
        created_at=NOW,
        expires_at=expires_at,
    )
    await store.create_batch(record)
    assert await store.claim_validation("v", time.time(), 60) is not None
    validator = Validator(ENDPOINT, lambda model: model == "m")
    validator.feed(content)
    result = validator.finish()
    assert result.ok
    pricing = Pricing(0.0, 0.0, 0.5, "USD")
    assert await store.finish_validation(record.id, "v", result.requests, "m", pricing, NOW)
    return result.requests


def send_order(name: str, requests: list[RequestLine]) -> list[str]:
    return [f"{name}-{r.line}" for r in sorted(requests, key=lambda r: (r.send_order, r.line))]


async def done(store: Store, batch_ids: list[str]) -> None:
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while True:
        batches = [await store.get_batch(None, b) for b in batch_ids]
        if all(b is not None and b.completed == b.total for b in batches):
            return
        assert time.monotonic() < deadline, batches
        await asyncio.sleep(0.01)


async def test_an_earlier_deadline_is_served_at_once_each_batch_in_its_own_order(
    store: Store, tmp_path: Path
) -> None:
    rng = random.Random(3)
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.open()
    backend = Recording()
    router = Router([(backend, ["m"])])
    sink = ResultSink(store, interval=0.01, max_batch=50, on_finished=lambda ids: None)
    policy = outcomes.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
    dispatcher = Dispatcher(
        store, blobs, router, sink, owner="w", lease=60, policy=policy, poll_interval=0.05
    )
    late = await add_batch(store, blobs, "late", file_of("late", 60, rng), NOW + 9000)
    urgent: list[RequestLine] = []

    async def arrives() -> None:
        # The urgent batch comes while the late one is in its first groups.
        urgent.extend(
            await add_batch(store, blobs, "urgent", file_of("urgent", 20, rng), NOW + 100)
        )
        dispatcher.wake()

    backend.hooks[10] = arrives
    tasks = [asyncio.create_task(dispatcher.run()), asyncio.create_task(sink.run())]
    try:
        await done(store, ["batch_late", "batch_urgent"])
    finally:
        dispatcher.stop()
        sink.stop()
        await asyncio.gather(*tasks)
        await blobs.close()

    sent = backend.sent
    assert len(sent) == 80 and len(set(sent)) == 80
    late_sent = [m for m in sent if m.startswith("late-")]
    urgent_sent = [m for m in sent if m.startswith("urgent-")]
    # Each batch in its own send order, grouped by prefix, whatever the other's groups.
    assert late_sent == send_order("late", late)
    assert urgent_sent == send_order("urgent", urgent)
    # Earliest deadline first: once the urgent batch is there, the late one only finishes what
    # it had claimed ahead (at most a ceiling's worth queued, and what was in flight) before
    # the urgent batch goes; then every urgent line goes before the late one resumes.
    first_urgent = sent.index(urgent_sent[0])
    assert first_urgent - 10 <= 3 * CEILING
    last_urgent = sent.index(urgent_sent[-1])
    assert all(m.startswith("urgent-") for m in sent[first_urgent : last_urgent + 1])
    assert last_urgent < len(sent) - 1  # the late batch was not finished first
