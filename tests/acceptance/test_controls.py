"""The batch controls (docs/extensions.md) through the official ``openai`` SDK against
``lowtide serve`` as a process and the fake upstream as a process: the create fields in
``extra_body``, the routes through the SDK's generic ``get`` and ``post``, and the two commands
the README shows. One server and one upstream serve the whole module (each test's batches end
before the next test starts); the behaviour in detail is tested in tests/inprocess."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
from openai.types import Batch

from lowtide.testing.harness import Lowtide, Upstream
from tests.support.batches import TEST_URL, ds_lines, parse_jsonl
from tests.support.commands import run

from .conftest import (
    ALICE,
    assert_each_once,
    chat_line,
    client,
    config_toml,
    jsonl,
    read_results,
    submit,
    wait_for,
)

#: What each test starts from: the fake upstream's defaults for what the tests change.
UPSTREAM_DEFAULTS: dict[str, Any] = {"latency": 0.0, "fail_contains": "FAIL400"}


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    up = Upstream("--seed", "7", log=tmp_path_factory.mktemp("upstream") / "upstream.log")
    yield up
    up.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: Upstream) -> Iterator[Lowtide]:
    # Two slots; a hanging line times out after 2 s and is tried again until its batch ends.
    config = config_toml(fake, max_concurrency=2, timeout=2.0, max_attempts=100)
    lowtide = Lowtide(tmp_path_factory.mktemp("lowtide"), config)
    lowtide.start()
    yield lowtide
    lowtide.stop()


@pytest.fixture
def c(server: Lowtide, fake: Upstream) -> Iterator[openai.OpenAI]:
    fake.configure(**UPSTREAM_DEFAULTS)
    fake.reset()
    yield client(server)
    fake.configure(**UPSTREAM_DEFAULTS)


def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check``; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def extra(batch: Batch, key: str) -> Any:
    """An extension field: the SDK's model keeps keys it does not declare in ``model_extra``."""
    return (batch.model_extra or {})[key]


def sent(fake: Upstream, prefix: str) -> int:
    """Requests the upstream received for lines whose prompt starts with ``prefix``."""
    per_key = fake.stats(per_key=True)["per_key"]
    return sum(n for key, n in per_key.items() if key.startswith(prefix))


def lines_for(n: int, prefix: str) -> list[dict[str, Any]]:
    # Same-length prompts: every line costs the same.
    return [chat_line(f"{prefix}-{i}", f"{prefix} {i:04d}") for i in range(n)]


def ended(c: openai.OpenAI, batch_id: str) -> tuple[int, int]:
    """(completed, failed) of the batch now."""
    counts = c.batches.retrieve(batch_id).request_counts
    assert counts is not None  # lowtide always sends them
    return counts.completed, counts.failed


def results(c: openai.OpenAI, batch_id: str, **params: Any) -> httpx.Response:
    return c.get(f"/batches/{batch_id}/results", cast_to=httpx.Response, options={"params": params})


def ids_of(response: httpx.Response) -> list[str]:
    return [line["custom_id"] for line in parse_jsonl(response.text)]


def marks(response: httpx.Response) -> tuple[int, int]:
    return int(response.headers["lowtide-last-line"]), int(response.headers["lowtide-done-through"])


def lowtide_cli(server: Lowtide, *args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LOWTIDE_"))}
    env |= {"LOWTIDE_BASE_URL": server.url, "LOWTIDE_API_KEY": ALICE}
    done = run([sys.executable, "-m", "lowtide", *args], cwd=cwd, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_priority_and_max_cost_in_extra_body(c: openai.OpenAI) -> None:
    # What one line costs, measured on a batch of one line like the others.
    probe = wait_for(c, submit(c, lines_for(1, "costly")).id)
    per_line = extra(probe, "cost")["amount"]
    assert per_line > 0
    lines = lines_for(200, "costly")
    cap = per_line * 10.5
    batch = submit(c, lines, extra_body={"priority": 5, "max_cost": cap})
    assert extra(batch, "priority") == 5 and extra(batch, "max_cost") == pytest.approx(cap)
    assert extra(batch, "max_error_rate") is None
    done = wait_for(c, batch.id)
    assert done.status == "cancelled" and extra(done, "stop_reason") == "max_cost"
    assert extra(done, "priority") == 5
    outputs, errors = read_results(c, done)
    assert_each_once(lines, outputs, errors)
    assert {e["error"]["code"] for e in errors} == {"batch_stopped"}
    # Billed exactly what ran; past the cap only by what was in flight when it was crossed
    # (two slots, and answers not yet committed).
    assert extra(done, "cost")["amount"] == pytest.approx(per_line * len(outputs))
    assert 11 <= len(outputs) < 200


def test_pause_sends_nothing_new_until_resume(c: openai.OpenAI, fake: Upstream) -> None:
    fake.configure(latency=0.05)
    lines = lines_for(60, "paused")
    batch = submit(c, lines)
    eventually(lambda: ended(c, batch.id)[0] >= 3, "lines done")
    paused = c.post(f"/batches/{batch.id}/pause", cast_to=Batch)
    assert paused.status == "in_progress" and extra(paused, "paused_at") is not None
    assert extra(paused, "estimated_completion_at") is None

    def settled() -> bool:  # what was in flight at the pause has ended and is recorded
        completed = ended(c, batch.id)[0]
        return fake.stats()["in_flight"] == 0 and sent(fake, "paused") == completed

    eventually(settled, "the requests in flight at the pause ended")
    before = sent(fake, "paused")
    assert before < 60
    # Another batch runs to its end meanwhile: the engine kept sending, not the paused lines.
    other = wait_for(c, submit(c, lines_for(6, "meanwhile")).id)
    assert other.status == "completed" and sent(fake, "meanwhile") == 6
    assert sent(fake, "paused") == before
    still = c.batches.retrieve(batch.id)
    assert still.status == "in_progress" and extra(still, "paused_at") == extra(paused, "paused_at")
    assert extra(still, "lines_per_minute") is None
    resumed = c.post(f"/batches/{batch.id}/resume", cast_to=Batch)
    assert extra(resumed, "paused_at") is None
    done = wait_for(c, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 60
    outputs, errors = read_results(c, done)
    assert_each_once(lines, outputs, errors)
    assert sent(fake, "paused") == 60


def test_results_so_far_while_the_batch_runs(
    c: openai.OpenAI, server: Lowtide, tmp_path: Path
) -> None:
    # Line 3 never answers (it times out and is tried again until the cancel), line 5 is
    # refused with a 400: the batch runs on with every other line ended.
    lines = [
        chat_line(
            f"r-{i}", f"{'HANGFOREVER ' if i == 3 else ''}{'FAIL400 ' if i == 5 else ''}q {i}"
        )
        for i in range(1, 8)
    ]
    batch = submit(c, lines)
    eventually(lambda: sum(ended(c, batch.id)) == 6, "every line but the hanging one ended")
    every = results(c, batch.id)
    assert every.headers["content-type"].startswith("application/jsonl")
    assert ids_of(every) == ["r-1", "r-2", "r-4", "r-5", "r-6", "r-7"]  # line order, once each
    assert marks(every) == (7, 2)
    assert ids_of(results(c, batch.id, kind="output")) == ["r-1", "r-2", "r-4", "r-6", "r-7"]
    assert ids_of(results(c, batch.id, kind="errors")) == ["r-5"]
    assert ids_of(results(c, batch.id, after=4)) == ["r-5", "r-6", "r-7"]
    assert c.get(f"/batches/{batch.id}/results", cast_to=str) == every.text  # the README's call
    # Following it with the cursor: contiguous, then after = the last Lowtide-Last-Line.
    first = results(c, batch.id, contiguous="true")
    assert ids_of(first) == ["r-1", "r-2"] and marks(first) == (2, 2)
    cursor = marks(first)[0]
    assert ids_of(results(c, batch.id, contiguous="true", after=cursor)) == []
    # The README's command, while the batch runs.
    lowtide_cli(
        server, "batch", "download", batch.id, "--partial", "-o", "so_far.jsonl", cwd=tmp_path
    )
    so_far = parse_jsonl((tmp_path / "so_far.jsonl").read_text())
    assert [line["custom_id"] for line in so_far] == ["r-1", "r-2", "r-4", "r-6", "r-7"]
    errors_so_far = parse_jsonl((tmp_path / "so_far.errors.jsonl").read_text())
    assert [line["custom_id"] for line in errors_so_far] == ["r-5"]

    c.batches.cancel(batch.id)
    assert wait_for(c, batch.id).status == "cancelled"
    rest = results(c, batch.id, contiguous="true", after=cursor)
    assert ids_of(rest) == ["r-3", "r-4", "r-5", "r-6", "r-7"] and marks(rest) == (7, 7)
    assert parse_jsonl(rest.text)[0]["error"]["code"] == "batch_cancelled"
    followed = parse_jsonl(first.text) + parse_jsonl(rest.text)
    assert_each_once(
        lines, [x for x in followed if x["error"] is None], [x for x in followed if x["error"]]
    )


def test_retry_of_some_codes(
    c: openai.OpenAI, server: Lowtide, fake: Upstream, tmp_path: Path
) -> None:
    lines = [chat_line(f"m-{i}", f"{'FAIL400 ' if i % 3 == 0 else ''}line {i}") for i in range(10)]
    source = wait_for(
        c, submit(c, lines, metadata={"ds_name": "nightly"}, extra_body={"priority": 3}).id
    )
    assert source.status == "completed" and source.request_counts.failed == 4
    with pytest.raises(openai.ConflictError) as refused:
        c.post(f"/batches/{source.id}/retry", cast_to=Batch, body={"codes": ["upstream_timeout"]})
    assert refused.value.body["code"] == "nothing_to_retry"  # type: ignore[index]
    fake.configure(fail_contains="NEVER")  # the backend now takes those lines
    new = c.post(
        f"/batches/{source.id}/retry",
        cast_to=Batch,
        body={"codes": ["context_length_exceeded"]},
    )
    assert new.metadata == {"ds_name": "nightly", "retry_of": source.id}
    assert extra(new, "priority") == 3 and new.endpoint == source.endpoint
    original = jsonl(lines).splitlines(keepends=True)
    assert c.files.content(new.input_file_id).content == b"".join(original[i] for i in (0, 3, 6, 9))
    done = wait_for(c, new.id)
    outputs, errors = read_results(c, done)
    assert [o["custom_id"] for o in outputs] == ["m-0", "m-3", "m-6", "m-9"] and errors == []
    # The README's command: a new batch of the same lines, its id printed.
    printed = lowtide_cli(
        server, "batch", "retry", source.id, "--code", "context_length_exceeded", cwd=tmp_path
    )
    again = c.batches.retrieve(printed.strip())
    assert again.id != new.id and (again.metadata or {})["retry_of"] == source.id
    assert wait_for(c, again.id).request_counts.completed == 4


def test_estimate(c: openai.OpenAI) -> None:
    lines = [chat_line(f"e-{i}", f"estimate line {i:03d}", max_tokens=50) for i in range(20)]
    upload = c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    found = c.post(
        "/batches/estimate",
        cast_to=object,
        body={"input_file_id": upload.id, "endpoint": "/v1/chat/completions"},
    )
    assert isinstance(found, dict)
    assert found["object"] == "batch.estimate" and found["errors"] is None
    assert (found["model"], found["lines"], found["output_tokens_max"]) == ("fake-model", 20, 1000)
    tokens = found["input_tokens"]
    assert tokens > 0 and found["input_tokens_method"] in ("characters", "tokenize")
    cost = found["cost"]
    assert cost["currency"] == "USD"
    assert cost["min"] == pytest.approx(tokens * 0.8 * 0.5 / 1e6)
    assert cost["max"] == pytest.approx((tokens * 0.8 + 1000 * 2.0) * 0.5 / 1e6)
    bad = c.files.create(file=("bad.jsonl", b'{"custom_id": "x"}\n'), purpose="batch")
    refused = c.post(
        "/batches/estimate",
        cast_to=object,
        body={"input_file_id": bad.id, "endpoint": "/v1/chat/completions"},
    )
    assert isinstance(refused, dict) and refused["errors"]["data"]
    with pytest.raises(openai.BadRequestError) as raised:
        c.post("/batches/estimate", cast_to=object, body={"endpoint": "/v1/chat/completions"})
    assert raised.value.body["code"] == "missing_required_parameter"  # type: ignore[index]
    assert all(b.input_file_id != upload.id for b in c.batches.list(limit=100).data)


def test_max_error_rate_stops_the_batch(c: openai.OpenAI) -> None:
    # Every third line is refused with a 400 (not retried): a third of the lines fail.
    lines = [chat_line(f"x-{i}", f"{'FAIL400 ' if i % 3 == 0 else ''}rate {i}") for i in range(400)]
    batch = submit(c, lines, extra_body={"max_error_rate": 0.2})
    assert extra(batch, "max_error_rate") == 0.2
    done = wait_for(c, batch.id)
    assert done.status == "cancelled" and extra(done, "stop_reason") == "max_error_rate"
    outputs, errors = read_results(c, done)
    assert_each_once(lines, outputs, errors)
    codes = [e["error"]["code"] for e in errors]
    assert set(codes) == {"context_length_exceeded", "batch_stopped"}
    ran = len(outputs) + codes.count("context_length_exceeded")
    assert 100 <= ran < 400  # judged from 100 ended lines, stopped well before the end
    stopped = [e for e in errors if e["error"]["code"] == "batch_stopped"]
    assert all(e["response"] is None for e in stopped)


def test_pause_of_a_finished_batch_is_a_409(c: openai.OpenAI) -> None:
    done = wait_for(c, submit(c, ds_lines(2), endpoint=TEST_URL).id)
    assert done.status == "completed"
    # An unmodified client's view: the extension fields are there, at their defaults.
    assert {k: extra(done, k) for k in ("priority", "paused_at", "stop_reason")} == {
        "priority": 0,
        "paused_at": None,
        "stop_reason": None,
    }
    for verb in ("pause", "resume"):
        with pytest.raises(openai.ConflictError) as raised:
            c.post(f"/batches/{done.id}/{verb}", cast_to=Batch)
        assert raised.value.status_code == 409
        assert raised.value.body["type"] == "invalid_request_error"  # type: ignore[index]
        assert "'completed'" in raised.value.message
    with pytest.raises(openai.NotFoundError):
        c.post(f"/batches/batch_{'0' * 32}/pause", cast_to=Batch)
