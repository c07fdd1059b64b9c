"""The pure rules of the batch controls: the pace and the estimated end, the serving order
(priority against deadlines), the caps, the lines of requests never run, and the counting
behind an estimate."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest

from lowtide.domain import controls, estimate, lines, pace, priority
from lowtide.domain.records import BatchRecord, Pricing, Usage
from lowtide.domain.status import Status

NOW = 1_700_000_000.0


def running(**changes: object) -> BatchRecord:
    record = BatchRecord(
        id="batch_1",
        account="a",
        endpoint="/v1/chat/completions",
        input_file_id="f",
        completion_window="24h",
        created_at=int(NOW) - 600,
        expires_at=int(NOW) + 86400,
        status=Status.IN_PROGRESS,
        in_progress_at=int(NOW) - 300,
        total=1000,
        pricing=Pricing(1.0, 2.0, 0.5, "USD"),
    )
    return record.replace(**changes)


# --------------------------------------------------------------------------- pace


def test_no_pace_over_less_than_the_least_span() -> None:
    assert pace.per_second(NOW - 5, 10, NOW - 5, 0, 0, 0, NOW) is None
    assert pace.per_second(None, 10, 0, 0, 0, 0, NOW) is None


def test_the_pace_reads_from_the_older_mark() -> None:
    # Marks at NOW-100 (200 done) and NOW-30 (260 done); 300 done now: 100 lines in 100 s.
    assert pace.per_second(NOW - 500, 300, NOW - 30, 260, NOW - 100, 200, NOW) == 1.0
    # No previous mark yet: from the current one.
    assert pace.per_second(NOW - 500, 300, NOW - 50, 250, 0, 0, NOW) == 1.0
    # No mark at all (a batch started before the marks): from the start.
    assert pace.per_second(NOW - 300, 300, 0, 0, 0, 0, NOW) == 1.0


def test_a_stall_brings_the_pace_down() -> None:
    before = pace.per_second(NOW - 500, 300, NOW - 30, 260, NOW - 100, 200, NOW)
    later = pace.per_second(NOW - 500, 300, NOW - 30, 260, NOW - 100, 200, NOW + 300)
    assert before is not None and later is not None and later < before / 3


def test_mark_sets_the_pace_and_the_end() -> None:
    batch = running(completed=280, failed=20, pace_at=NOW - 30, pace_done=260)
    batch = batch.replace(pace_prev_at=NOW - 100, pace_prev_done=200)
    pace.mark([batch], NOW)
    assert batch.lines_per_minute == 60.0
    assert batch.estimated_completion_at == int(NOW) + 700  # 700 lines left at 1 a second


@pytest.mark.parametrize(
    "changes",
    [
        {"paused_at": int(NOW) - 10},
        {"status": Status.CANCELLING},
        {"status": Status.COMPLETED, "completed": 1000},
        {"in_progress_at": int(NOW) - 2, "pace_at": NOW - 2},
    ],
)
def test_no_pace_when_paused_not_running_or_too_soon(changes: dict[str, object]) -> None:
    batch = running(**changes)
    pace.mark([batch], NOW)
    assert batch.lines_per_minute is None and batch.estimated_completion_at is None


def test_no_end_while_nothing_ends() -> None:
    batch = running(completed=10, pace_at=NOW - 120, pace_done=10)
    pace.mark([batch], NOW)
    assert batch.lines_per_minute == 0.0 and batch.estimated_completion_at is None


def test_model_pace_sums_running_batches_else_the_last_one_that_ended() -> None:
    def row(status: str, done: int, at: float, counted: float) -> pace.PaceRow:
        return pace.PaceRow(status, int(at), done, at, 0, 0.0, 0, int(counted))

    running_rows = [row("in_progress", 100, NOW - 100, NOW), row("in_progress", 50, NOW - 50, NOW)]
    ended = [row("completed", 60, NOW - 400, NOW - 340), row("completed", 30, NOW - 900, NOW - 870)]
    assert pace.model_per_second(running_rows + ended, NOW) == 2.0
    assert pace.model_per_second(ended, NOW) == 1.0  # the last one to end
    assert pace.model_per_second([], NOW) is None


# --------------------------------------------------------------------------- serving order


@dataclass(frozen=True)
class B:
    """A batch as the serving order reads it."""

    name: str
    model: str = "m"
    expires_at: int = int(NOW) + 86400
    priority: int = 0
    remaining: int = 100
    pace: float | None = 1.0

    def replace(self, **changes: object) -> B:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def order(*batches: B) -> list[str]:
    return [b.name for b in priority.serve_order(list(batches), NOW)]


def test_higher_priority_first_when_no_deadline_is_near() -> None:
    a = B("a", expires_at=int(NOW) + 3600)
    b = B("b", expires_at=int(NOW) + 7200, priority=5)
    c = B("c", expires_at=int(NOW) + 9000, priority=5)
    assert order(a, b, c) == ["b", "c", "a"]


def test_a_near_deadline_goes_before_a_higher_priority() -> None:
    # The model runs 1 line a second (only a has been measured). a needs 1000 s of it, with
    # only 1500 s left: urgent.
    a = B("a", expires_at=int(NOW) + 1500, remaining=1000)
    b = B("b", expires_at=int(NOW) + 7200, priority=5, remaining=100, pace=None)
    assert order(a, b) == ["a", "b"]
    assert order(a.replace(expires_at=int(NOW) + 2500), b) == ["b", "a"]


def test_a_backlog_counts_the_batches_due_before() -> None:
    early = B("early", expires_at=int(NOW) + 5000, remaining=2500)
    late = B("late", expires_at=int(NOW) + 5200, remaining=100, pace=None)
    top = B("top", expires_at=int(NOW) + 80000, priority=9, remaining=100, pace=None)
    # early: 2,500 s of 5,000 s left; late: 2,600 s (with early's) of 5,200 s: both urgent.
    assert order(early, late, top) == ["early", "late", "top"]
    # With more time, late is not urgent: top's priority goes first.
    later = late.replace(expires_at=int(NOW) + 5300)
    assert order(early, later, top) == ["early", "top", "late"]


def test_the_floor_and_a_stall_make_batches_urgent() -> None:
    a = B("a", expires_at=int(NOW) + 500, remaining=1)
    b = B("b", expires_at=int(NOW) + 9000, priority=5)
    assert order(a, b) == ["a", "b"]
    # Lines stopped ending: no time is enough, every batch is urgent (earliest deadline first).
    stalled = [B("x", pace=0.0, expires_at=int(NOW) + 80000), B("y", pace=0.0, priority=3)]
    assert order(*stalled) == ["x", "y"]


def test_priority_holds_before_the_pace_is_known() -> None:
    unknown = [B("x", pace=None, expires_at=int(NOW) + 3600), B("y", pace=None, priority=3)]
    assert order(*unknown) == ["y", "x"]
    near = B("x", pace=None, expires_at=int(NOW) + 300)
    assert order(near, B("y", pace=None, priority=3)) == ["x", "y"]  # within the floor


def test_models_are_judged_apart() -> None:
    # Model n ends no lines: its batches are urgent; model m's priority holds among its own.
    m_low = B("m_low", expires_at=int(NOW) + 3600)
    m_high = B("m_high", expires_at=int(NOW) + 7200, priority=5)
    n_one = B("n_one", model="n", pace=0.0, expires_at=int(NOW) + 8000)
    assert order(m_low, m_high, n_one) == ["n_one", "m_high", "m_low"]


def test_the_guarantee_at_the_moment_a_batch_turns_urgent() -> None:
    """When it turns urgent, what is due no later than it fits in half its time left."""
    for left in range(100, 5000, 50):
        a = B("a", expires_at=int(NOW) + left, remaining=1000)
        urgent = order(a, B("b", priority=1, pace=None))[0] == "a"
        need = 1000 / 1.0
        assert urgent == (left <= max(priority.URGENT_FLOOR, priority.URGENT_FACTOR * need))


# --------------------------------------------------------------------------- caps


def test_cap_crossed() -> None:
    cost = Pricing(1.0, 2.0, 0.5, "USD").cost(Usage(1000, 0, 500))  # 1e-3
    assert controls.cap_crossed(running(max_cost=cost, usage=Usage(1000, 0, 500))) == "max_cost"
    assert controls.cap_crossed(running(max_cost=cost * 2, usage=Usage(1000, 0, 500))) is None
    assert controls.cap_crossed(running(max_error_rate=0.1, completed=90, failed=9)) is None
    assert controls.cap_crossed(running(max_error_rate=0.1, completed=90, failed=10)) is None
    hit = running(max_error_rate=0.1, completed=89, failed=11)
    assert controls.cap_crossed(hit) == "max_error_rate"
    assert controls.cap_crossed(hit.replace(total=100)) is None  # every line ended
    assert controls.cap_crossed(hit.replace(status=Status.CANCELLING)) is None


def test_the_lines_of_requests_never_run() -> None:
    assert controls.unrun_reason(Status.COMPLETED, None) is None
    assert controls.unrun_reason(Status.EXPIRED, None) == (
        lines.EXPIRED_CODE,
        lines.EXPIRED_MESSAGE,
    )
    assert controls.unrun_reason(Status.CANCELLED, "cancelled_by_user") == (
        lines.CANCELLED_CODE,
        lines.CANCELLED_MESSAGE,
    )
    code, message = controls.unrun_reason(Status.CANCELLED, "max_cost") or ("", "")
    assert code == "batch_stopped" and "max_cost" in message
    assert controls.unrun_reason(Status.CANCELLED, "upstream_gone")[0] == "batch_cancelled"  # type: ignore[index]


# --------------------------------------------------------------------------- estimates


def test_prompts_of_each_endpoint() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is 2+2?"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            },
        ]
    }
    prompt = estimate.prompt_of(chat, "/v1/chat/completions")
    assert prompt.text == "Be brief.\nWhat is 2+2?\n" and prompt.messages == 2
    assert prompt.approx_tokens() == math.ceil(len(prompt.text) / 4) + 8
    assert estimate.prompt_of({"prompt": [1, 2, 3]}, "/v1/completions").approx_tokens() == 3
    assert estimate.prompt_of({"input": ["ab", "cd"]}, "/v1/embeddings").text == "ab\ncd"
    responses = {"input": [{"role": "user", "content": "hello"}]}
    assert estimate.prompt_of(responses, "/v1/responses").messages == 1


def test_output_limits() -> None:
    limit = estimate.Limit(("max_completion_tokens", "max_tokens"), default=100, cap=500)
    assert limit.of({"max_tokens": 50}) == 50
    assert limit.of({"max_completion_tokens": 900}) == 500
    assert limit.of({}) == 100
    assert estimate.Limit(("max_tokens",)).of({}) is None
    assert estimate.Limit(("max_tokens",), cap=20).of({}) == 20


def test_the_scanner_counts_what_the_validator_would_keep() -> None:
    lines_ = [
        {
            "custom_id": "a",
            "body": {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 7},
        },
        {"custom_id": "b", "body": {"messages": [{"role": "user", "content": "y" * 8}]}},
    ]
    data = (
        b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(x).encode() for x in lines_) + b"\n\nnot json\n"
    )
    fields = ("max_completion_tokens", "max_tokens")
    tally = estimate.Tally("/v1/chat/completions", fields)
    scanner = estimate.LineScanner(tally)
    for i in range(0, len(data), 7):  # chunks that cut lines anywhere, the BOM too
        scanner.feed(data[i : i + 7])
    scanner.finish()
    assert (tally.lines, tally.chars) == (2, 48)
    assert tally.approx_tokens == 10 + 4 + 2 + 4
    assert tally.output_ceiling([estimate.Limit(fields)]) == (7, 1)
    assert tally.output_ceiling([estimate.Limit(fields, default=100)]) == (107, 0)
    capped = [estimate.Limit(fields, default=100, cap=5), estimate.Limit(fields, default=50)]
    assert tally.output_ceiling(capped) == (7 + 50, 0)  # the most any backend allows a line
    first = len(json.dumps(lines_[0]))
    assert [(o, n) for o, n, _ in tally.sample] == [
        (3, first),
        (3 + first + 2, len(json.dumps(lines_[1]))),
    ]
