"""Unit tests of the pure parts of the engine and store: outcomes, the router, result lines,
pricing, result chunk sizes."""

from __future__ import annotations

import time

import orjson
import pytest

from lowtide.backends.base import Reply, Unreachable
from lowtide.backends.test_model import TestModelBackend
from lowtide.domain import lines
from lowtide.domain.records import Pricing, Usage
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Claim, Outcome
from lowtide.engine import outcomes
from lowtide.engine.router import Router
from lowtide.store import rows

CLAIM = Claim("batch_x", line=7, custom_id="c7", offset=0, length=10, attempts=0, epoch=3)
POLICY = outcomes.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)


def reply(status: int, body: object, retry_after: float | None = None) -> Reply:
    return Reply(status, orjson.dumps(body), request_id="req-1", retry_after=retry_after)


def test_success_keeps_usage_and_compacts_the_body():
    body = {
        "id": "chatcmpl-1",
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    }
    pretty = Reply(200, orjson.dumps(body, option=orjson.OPT_INDENT_2), request_id=None)
    outcome = outcomes.from_reply(CLAIM, pretty, POLICY)
    assert outcome.kind == SUCCEEDED and outcome.epoch == 3 and outcome.attempts == 1
    assert (outcome.input_tokens, outcome.output_tokens) == (12, 5)
    assert (outcome.cached_tokens, outcome.reasoning_tokens) == (4, 2)
    assert b"\n" not in (outcome.body or b"") and outcome.request_id == "chatcmpl-1"
    assert orjson.loads(outcome.body or b"") == body
    # A compact answer is kept byte for byte (key order, number spelling), less its newline.
    compact = b'{"id":"chatcmpl-2","n":1.50,"usage":{"prompt_tokens":1}}'
    kept = outcomes.from_reply(CLAIM, Reply(200, compact + b"\r\n", request_id=None), POLICY)
    assert kept.body == compact


def test_retryable_statuses_back_off_then_fail_with_the_backend_error():
    for status in (408, 409, 429, 500, 502, 503):
        outcome = outcomes.from_reply(CLAIM, reply(status, {"error": {}}), POLICY)
        assert outcome.kind == RETRY and outcome.attempts == 1
        assert outcome.not_before > time.time() - 1
    last = Claim("batch_x", 7, "c7", 0, 10, attempts=2, epoch=3)
    body = {"error": {"message": "overloaded", "code": "server_busy"}}
    outcome = outcomes.from_reply(last, reply(503, body), POLICY)
    assert outcome.kind == FAILED and outcome.attempts == 3
    assert outcome.error_code == "server_busy"
    assert outcome.error_message == "overloaded (after 3 attempts)"


def test_an_unreadable_input_line_is_retried_then_fails_as_input_unavailable():
    first = outcomes.from_unreadable_input(CLAIM, "cannot read", POLICY)
    assert first.kind == RETRY and first.attempts == 1
    last = Claim("batch_x", 7, "c7", 0, 10, attempts=POLICY.max_attempts - 1, epoch=3)
    failed = outcomes.from_unreadable_input(last, "cannot read", POLICY)
    assert failed.kind == FAILED and failed.error_code == "input_unavailable"
    assert failed.custom_id == "c7" and failed.attempts == POLICY.max_attempts


def test_retry_after_waits_without_spending_an_attempt():
    outcome = outcomes.from_reply(CLAIM, reply(429, {}, retry_after=2.0), POLICY)
    assert outcome.kind == RETRY and outcome.attempts == 0
    assert outcome.not_before == pytest.approx(time.time() + 2.0, abs=0.5)


def test_other_4xx_fail_at_once_with_a_code_fallback():
    outcome = outcomes.from_reply(CLAIM, Reply(404, b"<html>nope</html>"), POLICY)
    assert outcome.kind == FAILED and outcome.attempts == 1
    assert outcome.error_code == "http_404" and outcome.body is None


def test_garbage_2xx_is_retried_then_fails_clearly():
    outcome = outcomes.from_reply(CLAIM, Reply(200, b"{truncated"), POLICY)
    assert outcome.kind == RETRY
    last = Claim("batch_x", 7, "c7", 0, 10, attempts=2, epoch=3)
    outcome = outcomes.from_reply(last, Reply(200, b"[1]"), POLICY)
    assert outcome.kind == FAILED and outcome.error_code == "upstream_invalid_response"


def test_unreachable_is_retried_then_upstream_unavailable():
    exc = Unreachable("down")
    assert outcomes.from_unreachable(CLAIM, exc, POLICY).kind == RETRY
    last = Claim("batch_x", 7, "c7", 0, 10, attempts=2, epoch=3)
    outcome = outcomes.from_unreachable(last, exc, POLICY)
    assert outcome.kind == FAILED and outcome.error_code == "upstream_unavailable"


def test_router_picks_least_in_flight_and_respects_ceilings_and_pauses():
    a, b = TestModelBackend(), TestModelBackend()
    a.name, b.name = "a", "b"
    a.max_concurrency, b.max_concurrency = 2, 1
    router = Router([(a, ["m"]), (b, ["m"])])
    assert router.free("m") == 3
    first = router.acquire("m")
    second = router.acquire("m")
    assert {first.backend.name, second.backend.name} == {"a", "b"}  # spread, least in flight
    third = router.acquire("m")
    assert third is not None and router.acquire("m") is None and router.free("m") == 0
    router.release(third)
    router.pause(router.slot("a"), 60)
    assert router.free("m") == 0 and router.next_unpause() == pytest.approx(60, abs=1)
    assert router.slot("b").starved


def test_result_lines_have_both_error_views_and_stable_ids():
    ok = Outcome("batch_x", 1, 1, SUCCEEDED, 200, "r1", b'{"x":1}', custom_id="a")
    failed = Outcome("batch_x", 2, 1, FAILED, 400, "r2", b"{}", "bad", "no", custom_id="b")
    line = lines.outcome_line(ok)
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
    parsed = orjson.loads(line)
    assert parsed["custom_id"] == "a" and parsed["error"] is None
    assert parsed["response"] == {"status_code": 200, "request_id": "r1", "body": {"x": 1}}
    parsed = orjson.loads(lines.outcome_line(failed) or b"")
    assert parsed["response"]["status_code"] == 400
    assert parsed["error"] == {"code": "bad", "message": "no"}
    retry = Outcome("batch_x", 2, 1, RETRY, custom_id="b")
    assert lines.outcome_line(retry) is None  # a retry is not a result
    cancelled = (lines.CANCELLED_CODE, lines.CANCELLED_MESSAGE)
    parsed = orjson.loads(lines.unrun_line("batch_x", 3, "c", cancelled))
    assert parsed["response"] is None and parsed["error"]["code"] == "batch_cancelled"
    assert parsed["id"] == lines.line_id("batch_x", 3) and parsed["id"].startswith("batch_req_")
    assert len(parsed["id"]) == len("batch_req_") + 24
    expired = orjson.loads(lines.unrun_line("batch_x", 3, "c", None))
    assert expired["error"]["code"] == lines.EXPIRED_CODE and expired["id"] == parsed["id"]
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_cost_is_batch_priced_with_reasoning_as_output():
    pricing = Pricing(input_price=0.8, output_price=2.0, discount=0.5)
    usage = Usage(
        input_tokens=1_000_000,
        cached_tokens=500_000,
        output_tokens=2_000_000,
        reasoning_tokens=1_000_000,
    )
    assert pricing.cost(usage) == pytest.approx((0.8 + 4.0) * 0.5)
    assert usage.to_api()["total_tokens"] == 3_000_000


def test_result_chunks_hold_about_the_same_bytes_whatever_the_line_size():
    size = rows.ChunkSize(target=1_000_000, most=2000, least=16)
    assert size.rows == 128
    small = [(i, 2, None, b"x" * 1_000) for i in range(128)]
    assert size.after(small) == 1000  # 1 MB of 1 KB lines
    big = [(i, 2, None, b"x" * 100_000) for i in range(1000)]
    assert size.after(big) == 16  # at least a few rows per read
    assert size.after([(1, 0, "c", None)]) == 2000  # lines that never ran weigh nothing
