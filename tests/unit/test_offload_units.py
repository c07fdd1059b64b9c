"""Offload's pure parts: the batch backend's settings, the upstream limits, which lines make a
chunk, how an upstream's result lines become outcomes, the spill-over rule, the cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from lowtide import errors
from lowtide.domain.offload import LINE_SLACK, PRESETS, BackendShare, ChunkLine, Offloaded
from lowtide.domain.offload import window_hours as hours_of
from lowtide.domain.records import Pricing
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED
from lowtide.engine.offload import chunking, results, spill
from lowtide.engine.outcomes import RetryPolicy
from lowtide.settings import BackendSettings, load_settings

HTTP = '[[backends]]\nname = "gpu"\nbase_url = "http://127.0.0.1:1/v1"\nmodels = ["m"]\n'
BATCH = HTTP.replace('"gpu"', '"hosted"') + 'kind = "batch"\n'


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "lowtide.toml"
    path.write_text(text)
    return load_settings(path)


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HTTP + "spill = true\n", '"gpu": Value error, spill: only a backend of kind = "batch"'),
        (HTTP + "poll_interval = 5\nprice_factor = 2\n", "poll_interval, price_factor: only"),
        (BATCH + "max_concurrency = 4\n", "max_concurrency: a batch backend takes no such key"),
        (BATCH + 'concurrency = "adaptive"\nrpm = 60\n', "concurrency, rpm: a batch backend"),
        (
            BATCH + 'completion_window = "48h"\n',
            "completion_window = '48h': openai accepts only 24h",
        ),
        (BATCH + 'completion_window = "soon"\n', "completion_window: 'soon' is not a window"),
        (BATCH + "max_lines_per_chunk = 60000\n", "max_lines_per_chunk = 60000: over the openai"),
        (BATCH + 'limits = "dashscope"\nmax_line_bytes = 7000000\n', "over the dashscope limit"),
        (HTTP + 'kind = "grpc"\n', "kind: Input should be 'http' or 'batch'"),
    ],
)
def test_keys_that_make_no_sense_for_a_kind_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(")):
        load(tmp_path, text)


def test_a_batch_backend_gets_its_presets_limits_lowered_by_its_keys(tmp_path: Path) -> None:
    text = BATCH + 'limits = "dashscope"\ncompletion_window = "3d"\nmax_lines_per_chunk = 100\n'
    settings = load(tmp_path, text + HTTP)
    (hosted,) = settings.batch_backends()
    assert [b.name for b in settings.http_backends()] == ["gpu"]
    assert hosted.window() == "3d" and hours_of(hosted.window()) == 72
    limits = hosted.upstream_limits()
    assert (limits.max_lines, limits.max_file_bytes, limits.max_line_bytes) == (
        100,
        500_000_000,
        6_000_000,
    )
    openai = load(tmp_path, BATCH).backends[0]
    assert openai.window() == "24h" and openai.upstream_limits() == PRESETS["openai"]
    assert (openai.poll_interval, openai.spill, openai.price_factor) == (60.0, False, 1.0)
    assert openai.delete_files and openai.deadline_margin == 1800


def test_windows_read_as_the_hosted_apis_write_them() -> None:
    assert [hours_of(w) for w in ("24h", "1d", "336h", "14d")] == [24, 24, 336, 336]
    for bad in ("0h", "24", "h", "24 h", "1w"):
        with pytest.raises(ValueError, match="is not a window"):
            hours_of(bad)


# --- chunks -----------------------------------------------------------------------------------


def test_a_chunk_is_filled_within_the_upstreams_limits() -> None:
    limits = BackendSettings(
        name="b", kind="batch", base_url="x", models=["m"], max_lines_per_chunk=3,
        max_chunk_bytes=3 * (100 + LINE_SLACK),
    ).upstream_limits()  # fmt: skip
    candidates = [(i, 100) for i in range(1, 10)]
    assert chunking.fit(candidates, limits, want=10) == [1, 2, 3]
    assert chunking.fit(candidates, limits, want=2) == [1, 2]
    # Bytes: each line counts with the room lowtide keeps for what it changes in it.
    assert chunking.fit([(1, 100), (2, 101), (3, 100)], limits, want=10) == [1, 2]
    assert chunking.longest_line(limits) == limits.max_line_bytes - LINE_SLACK


# --- result lines to outcomes -----------------------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


def _lines(n: int, attempts: int = 0) -> list[ChunkLine]:
    return [ChunkLine(i, f"c{i}", i * 100, 90, attempts, 7) for i in range(1, n + 1)]


def _answered(line: int, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "batch_req_x",
        "custom_id": str(line),
        "response": {"status_code": status, "request_id": f"req_{line}", "body": body},
        "error": None if status == 200 else {"code": "x", "message": "y"},
    }


def test_upstream_answers_become_the_outcomes_http_answers_would() -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 5, "completion_tokens_details": {
        "reasoning_tokens": 2}, "prompt_tokens_details": {"cached_tokens": 3}}  # fmt: skip
    bad = {"error": {"message": "too long", "code": "context_length_exceeded"}}
    found = {
        1: _answered(1, 200, {"id": "chatcmpl-1", "usage": usage}),
        2: _answered(2, 400, bad),
        3: _answered(3, 500, {"error": {"message": "oops"}}),
        4: {"custom_id": "4", "response": None, "error": {"code": "batch_expired", "message": "m"}},
        5: {"custom_id": "5", "response": None, "error": {"code": "invalid_body", "message": "b"}},
        # 6 is in neither file
    }
    got = results.collect("batch_1", _lines(6), found, results.Unfinished(False), POLICY)
    kinds = [(o.line, o.kind, o.attempts) for o in got.outcomes]
    assert kinds == [
        (1, SUCCEEDED, 1),
        (2, FAILED, 1),
        (3, RETRY, 1),  # a 5xx is retried, an attempt spent
        (4, RETRY, 1),  # never ran: retried, an attempt spent (the upstream batch expired)
        (5, FAILED, 1),  # the upstream's own verdict
        (6, RETRY, 1),
    ]
    first = got.outcomes[0]
    assert (first.status_code, first.request_id) == (200, "req_1")
    assert orjson.loads(first.body or b"")["usage"] == usage
    assert got.tokens == {1: (11, 3, 5, 2)}
    assert (got.outcomes[1].error_code, got.outcomes[1].status_code) == (
        "context_length_exceeded",
        400,
    )
    assert (got.outcomes[4].error_code, got.outcomes[4].error_message) == ("invalid_body", "b")


def test_unfinished_lines_fail_once_their_attempts_are_spent_or_go_back_untouched() -> None:
    lines = _lines(2, attempts=2)
    expired = results.Unfinished(False, "upstream_batch_expired", "It ended first.")
    got = results.collect("batch_1", lines, {}, expired, POLICY).outcomes
    assert [(o.kind, o.error_code) for o in got] == [(FAILED, "upstream_batch_expired")] * 2
    assert got[0].error_message == "It ended first. (after 3 attempts)"
    back = results.collect("batch_1", lines, {}, results.Unfinished(True), POLICY).outcomes
    assert [(o.kind, o.attempts, o.epoch) for o in back] == [(RETRY, 2, 7)] * 2
    assert [o.kind for o in results.give_back("batch_1", lines)] == [RETRY, RETRY]


def test_a_429_line_waits_without_spending_an_attempt() -> None:
    found = {1: _answered(1, 429, {"error": {"message": "slow down"}})}
    (outcome,) = results.collect("b", _lines(1), found, results.Unfinished(False), POLICY).outcomes
    assert (outcome.kind, outcome.attempts) == (RETRY, 1)


def test_result_lines_that_are_not_ours_are_skipped() -> None:
    data = b'{"custom_id": "3", "response": null}\n\nnot json\n{"custom_id": "abc"}\n'
    assert list(results.parse(data)) == [3]


# --- spill-over -------------------------------------------------------------------------------


def test_the_pace_needs_enough_history_and_keeps_a_window() -> None:
    meter = spill.PaceMeter()
    meter.add(0.0, 0)
    meter.add(5.0, 50)
    assert meter.pace() is None  # less than MIN_SPAN seconds
    meter.add(10.0, 100)
    assert meter.pace() == pytest.approx(10.0)
    for t in range(11, 400):
        meter.add(float(t), 100 + (t - 10) * 2)
    assert meter.pace() == pytest.approx(2.0, rel=0.02)  # the last two minutes only


def test_spill_offloads_only_what_the_http_backends_will_not_finish() -> None:
    hour = 3600.0
    base = {"now": 0.0, "deadline": 30 * hour, "margin": 600.0, "window": 24 * hour, "tick": 1.0}
    # 10 lines a second for 30 h - 10 min: 1,074,000 lines; all of 1,000,000 stay local.
    assert spill.spill_needed(**base, remaining=1_000_000, pace=10.0) == 0
    # Half that pace: 537,000 stay, the rest goes upstream.
    assert spill.spill_needed(**base, remaining=1_000_000, pace=5.0) == 463_000
    # No pace yet: nothing, until the last call comes; then everything left.
    assert spill.spill_needed(**base, remaining=100, pace=None) == 0
    last = {**base, "now": 6 * hour - 600 - 1.5}
    assert spill.spill_needed(**last, remaining=100, pace=None) == 100
    # Past the last call nothing can go upstream any more.
    late = {**base, "now": 6 * hour}
    assert spill.spill_needed(**late, remaining=100, pace=0.0) == 0


# --- cost -------------------------------------------------------------------------------------


def test_offloaded_lines_cost_their_price_factor_times_the_batch_price() -> None:
    pricing = Pricing(input_price=0.8, output_price=2.0, discount=0.5)
    same = Offloaded((BackendShare("a", 10, 0, 0, (1000, 0, 500, 0), 1.0),))
    assert same.extra_cost(pricing) == 0.0
    double = Offloaded((BackendShare("a", 10, 0, 0, (1_000_000, 0, 0, 0), 2.0),))
    assert double.extra_cost(pricing) == pytest.approx(0.4)  # once more 0.8 * 0.5 per 1M
    both = Offloaded((BackendShare("a", 3, 1, 2), BackendShare("a", 5, 0, 0), BackendShare("b", 1)))
    assert (both.lines, both.running) == (10, 2)
    assert both.by_backend() == {"a": 9, "b": 1}
    assert both.running_by_backend() == {"a": 2, "b": 0}


# --- docs -------------------------------------------------------------------------------------


def test_the_toml_of_docs_offload_loads(tmp_path: Path) -> None:
    """docs/offload.md's example is a config lowtide starts with."""
    import re

    docs = Path(__file__).parents[2] / "docs" / "offload.md"
    (block,) = re.findall(r"```toml\n(.*?)```", docs.read_text(), re.S)
    settings = load(tmp_path, block)
    names = [(b.name, b.kind) for b in settings.backends]
    assert names == [
        ("openai-batch", "batch"),
        ("dashscope-batch", "batch"),
        ("local-vllm", "http"),
    ]
    dashscope = settings.batch_backends()[1]
    assert dashscope.spill and dashscope.upstream_limits() == PRESETS["dashscope"]
