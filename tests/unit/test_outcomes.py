"""Outcomes of a backend's answers as the metrics and the error file see them: the status class
of a retried attempt, and the attempts a failed line took."""

from __future__ import annotations

import itertools

import orjson

from lowtide import metrics
from lowtide.backends.base import Reply, Unreachable
from lowtide.domain.work import FAILED, RETRY, Claim
from lowtide.engine import outcomes
from lowtide.engine.dispatcher import Meters

POLICY = outcomes.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
_backends = itertools.count()


def claim(attempts: int = 0) -> Claim:
    return Claim("batch_o", line=4, custom_id="c4", offset=0, length=10, attempts=attempts, epoch=2)


def error_reply(status: int, message: str | None = None, retry_after: float | None = None) -> Reply:
    body = {"error": {"message": message, "type": "server_error"}} if message else {}
    return Reply(status, orjson.dumps(body), request_id="req-9", retry_after=retry_after)


def fresh_meters() -> Meters:
    # The registry is the process's own: a backend name of its own per test keeps counts apart.
    return Meters(f"backend-{next(_backends)}", "model-o")


def counted(meters: Meters, family: str, status_class: str) -> float:
    labels = {"backend": meters.backend, "model": meters.model, "status_class": status_class}
    return metrics.REGISTRY.get_sample_value(f"{family}_total", labels) or 0.0


def test_a_retried_5xx_is_counted_as_5xx():
    meters = fresh_meters()
    outcome = outcomes.from_reply(claim(), error_reply(500, "boom"), POLICY)
    assert outcome.kind == RETRY and outcome.status_code == 500
    meters.count(outcome)
    assert counted(meters, "lowtide_requests_retried", "5xx") == 1
    assert counted(meters, "lowtide_requests_retried", "none") == 0


def test_each_retried_status_keeps_its_class_and_no_answer_is_none():
    meters = fresh_meters()
    meters.count(outcomes.from_reply(claim(), error_reply(408, "slow"), POLICY))
    meters.count(outcomes.from_reply(claim(), error_reply(429, "busy"), POLICY))
    # A Retry-After pause costs no attempt, but the answer was still a 503.
    paused = outcomes.from_reply(claim(), error_reply(503, "later", retry_after=1.0), POLICY)
    assert paused.kind == RETRY and paused.attempts == 0
    meters.count(paused)
    meters.count(outcomes.from_unreachable(claim(), Unreachable("refused"), POLICY))
    assert counted(meters, "lowtide_requests_retried", "4xx") == 2
    assert counted(meters, "lowtide_requests_retried", "5xx") == 1
    assert counted(meters, "lowtide_requests_retried", "none") == 1


def test_the_last_failed_attempt_is_counted_as_failed_with_its_class():
    meters = fresh_meters()
    last = outcomes.from_reply(claim(attempts=2), error_reply(502, "bad gateway"), POLICY)
    assert last.kind == FAILED
    meters.count(last)
    assert counted(meters, "lowtide_requests_failed", "5xx") == 1
    assert counted(meters, "lowtide_requests_retried", "5xx") == 0


def test_a_retried_http_failure_says_how_many_attempts_it_took():
    outcome = outcomes.from_reply(claim(attempts=2), error_reply(500, "Model crashed"), POLICY)
    assert outcome.kind == FAILED and outcome.attempts == 3 and outcome.status_code == 500
    assert outcome.error_message == "Model crashed (after 3 attempts)"
    assert outcome.error_code == "server_error"
    # The backend's body is kept as it was.
    assert outcome.body is not None
    assert orjson.loads(outcome.body)["error"]["message"] == "Model crashed"


def test_a_retried_failure_without_an_error_object_says_it_too():
    outcome = outcomes.from_reply(claim(attempts=2), Reply(502, b"<html>gateway</html>"), POLICY)
    assert outcome.error_code == "http_502"
    assert outcome.error_message == "The backend answered HTTP 502. (after 3 attempts)"


def test_a_failure_at_the_first_attempt_carries_the_backend_message_alone():
    outcome = outcomes.from_reply(claim(), error_reply(400, "context too long"), POLICY)
    assert outcome.kind == FAILED and outcome.attempts == 1
    assert outcome.error_message == "context too long"


def test_attempts_are_counted_the_same_way_with_or_without_an_answer():
    unreachable = outcomes.from_unreachable(claim(attempts=2), Unreachable("refused"), POLICY)
    answered = outcomes.from_reply(claim(attempts=2), error_reply(503, "refused"), POLICY)
    assert unreachable.error_message == answered.error_message == "refused (after 3 attempts)"
