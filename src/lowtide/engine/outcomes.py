"""Turn a backend's reply (or its silence) into an outcome: succeeded, failed, or retry later."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from lowtide.backends.base import Reply, Unreachable
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Claim, Outcome

RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempts: int) -> float:
        # "Full jitter" exponential backoff: spreads retries of many lines over time so that a
        # recovering backend is not hit by all of them at once.
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempts - 1)))


def from_reply(
    claim: Claim,
    reply: Reply,
    policy: RetryPolicy,
    final: Callable[[int, Any], bool] | None = None,
) -> Outcome:
    """``final(status, parsed body)``: the backend's dialect knows this error answer is the
    request's own fault although its status says otherwise (llama.cpp answers some invalid
    bodies with 500): it fails at once, with the backend's status and body, as a 4xx would."""
    attempts = claim.attempts + 1
    parsed = _parse(reply.body)
    if 200 <= reply.status < 300:
        if not isinstance(parsed, dict):
            return _retry_or_fail(
                claim,
                attempts,
                policy,
                None,
                "upstream_invalid_response",
                "The backend answered with a body that is not a JSON object.",
            )
        return _succeeded(claim, attempts, reply, parsed)
    if reply.status in (429, 503) and reply.retry_after is not None:
        # The backend said when to come back: the whole backend is paused until then, and the
        # line did nothing wrong, so the wait costs it no attempt. A backend that never lets
        # go is bounded by the batch's completion window: its lines then end as expired.
        return _retry(claim, claim.attempts, reply.retry_after, reply.status)
    if (
        _retryable(reply.status)
        and attempts < policy.max_attempts
        and (final is None or not final(reply.status, parsed))
    ):
        wait = max(policy.delay(attempts), reply.retry_after or 0.0)
        return _retry(claim, attempts, wait, reply.status)
    return _http_failure(claim, attempts, reply, parsed)


def from_unreachable(claim: Claim, exc: Unreachable, policy: RetryPolicy) -> Outcome:
    return _retry_or_fail(
        claim, claim.attempts + 1, policy, None, exc.code or "upstream_unavailable", exc.message
    )


def from_unreadable_input(claim: Claim, message: str, policy: RetryPolicy) -> Outcome:
    """The request's line could not be read from the stored input file, for longer than the
    dispatcher's outage grace: retried like a backend error; ``input_unavailable`` once its
    attempts are spent."""
    return _retry_or_fail(claim, claim.attempts + 1, policy, None, "input_unavailable", message)


def _retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def _retry_or_fail(
    claim: Claim, attempts: int, policy: RetryPolicy, status: int | None, code: str, message: str
) -> Outcome:
    if attempts < policy.max_attempts:
        return _retry(claim, attempts, policy.delay(attempts), status)
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        FAILED,
        custom_id=claim.custom_id,
        attempts=attempts,
        status_code=status,
        error_code=code,
        error_message=f"{message} (after {attempts} attempts)",
    )


def _retry(claim: Claim, attempts: int, wait: float, status: int | None) -> Outcome:
    # The status of the failed attempt is kept for the metrics (its status class); the store
    # records nothing of a retry but its attempts and when to try again.
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        RETRY,
        custom_id=claim.custom_id,
        attempts=attempts,
        status_code=status,
        not_before=time.time() + wait,
    )


def _succeeded(claim: Claim, attempts: int, reply: Reply, body: dict[str, Any]) -> Outcome:
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    assert isinstance(usage, dict)
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        SUCCEEDED,
        custom_id=claim.custom_id,
        attempts=attempts,
        status_code=reply.status,
        request_id=reply.request_id or _str(body.get("id")),
        body=_one_line(reply.body, body),
        input_tokens=prompt,
        output_tokens=completion,
        cached_tokens=_int(details_in.get("cached_tokens") if isinstance(details_in, dict) else 0),
        reasoning_tokens=_int(
            details_out.get("reasoning_tokens") if isinstance(details_out, dict) else 0
        ),
    )


def _http_failure(claim: Claim, attempts: int, reply: Reply, parsed: Any) -> Outcome:
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        code = _str(error.get("code")) or _str(error.get("type")) or f"http_{reply.status}"
        message = _str(error.get("message")) or f"The backend answered HTTP {reply.status}."
    else:
        code, message = f"http_{reply.status}", f"The backend answered HTTP {reply.status}."
    if attempts > 1:
        # Say how many attempts the line took, as failures without an answer do, after the
        # backend's own message.
        message = f"{message} (after {attempts} attempts)"
    # The body is kept only if it is JSON; a raw HTML error page would break the JSONL line.
    body = _one_line(reply.body, parsed) if parsed is not None else None
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        FAILED,
        custom_id=claim.custom_id,
        attempts=attempts,
        status_code=reply.status,
        request_id=reply.request_id,
        body=body,
        error_code=code,
        error_message=message,
    )


def _one_line(raw: bytes, parsed: Any) -> bytes:
    """The answer as it goes into a result line: the backend's own bytes (they parsed as JSON)
    unless they span lines, as pretty-printed JSON does, which would break the JSONL file;
    then re-serialised compactly. Keeping the bytes saves a serialisation per request."""
    stripped = raw.strip()  # a trailing newline is common, and harmless once removed
    return stripped if b"\n" not in stripped else orjson.dumps(parsed)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
