"""An ended upstream batch's output and error files, turned into the outcomes of a chunk's
lines: exactly the outcomes an HTTP backend's answers would have given (engine/outcomes.py),
so that result lines, retries, usage and cost are the same whatever ran where
(docs/api-compatibility.md, "Result lines").

- A line the upstream answered (``response`` with a status) is that answer: a 2xx succeeds,
  a retryable status is retried (an attempt spent, a 429 with ``Retry-After`` waits without
  one), any other fails with the upstream's status and body.
- A line the upstream never ran (no ``response``: the upstream batch expired, was cancelled,
  failed as a whole, or lost its output file; or the line is in neither file) is
  *unfinished*: when lowtide itself stopped the batch, it goes back without spending an
  attempt (finalisation gives it its ``batch_cancelled`` or ``batch_expired`` line);
  otherwise it is retried like a request that got no answer, an attempt spent, until the
  attempts run out (``upstream_batch_expired``, ``upstream_batch_failed``...).
- A line with only an ``error`` of the upstream's own (not an expiry or cancel) fails with
  that code and message: the upstream judged it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from lowtide.backends.base import Reply, Unreachable
from lowtide.domain.offload import ChunkLine, Tokens
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Claim, Outcome
from lowtide.engine import outcomes

logger = logging.getLogger(__name__)

#: Error codes of lines an upstream never ran because its batch ended first.
_UNRUN_CODES = frozenset({"batch_expired", "batch_cancelled"})


@dataclass(frozen=True, slots=True)
class Unfinished:
    """What becomes of a line the upstream never ran: given back as it is (``give_back``),
    or retried with an attempt spent, failing with ``code`` once none is left."""

    give_back: bool
    code: str = "upstream_batch_expired"
    message: str = "The upstream batch ended before this request ran."


@dataclass(slots=True)
class Collected:
    """The outcomes of a chunk's lines, and the tokens of each line that succeeded."""

    outcomes: list[Outcome] = field(default_factory=list)
    tokens: dict[int, Tokens] = field(default_factory=dict)


def parse(data: bytes) -> dict[int, dict[str, Any]]:
    """Result lines by line number (our ``custom_id``); lines that are not ours are skipped."""
    found: dict[int, dict[str, Any]] = {}
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
            line = int(record["custom_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            logger.warning("an upstream result line that is not ours was skipped: %.200r", raw)
            continue
        if isinstance(record, dict):
            found[line] = record
    return found


def collect(
    batch_id: str,
    lines: Sequence[ChunkLine],
    found: dict[int, dict[str, Any]],
    unfinished: Unfinished,
    policy: outcomes.RetryPolicy,
    final: Callable[[int, Any], bool] | None = None,
) -> Collected:
    """The outcome of each of ``lines`` from the upstream's result lines ``found``."""
    collected = Collected()
    for item in lines:
        claim = Claim(
            batch_id, item.line, item.custom_id, item.offset, item.length, item.attempts, item.epoch
        )
        outcome = _outcome(claim, found.get(item.line), unfinished, policy, final)
        collected.outcomes.append(outcome)
        if outcome.kind == SUCCEEDED:
            collected.tokens[item.line] = (
                outcome.input_tokens,
                outcome.cached_tokens,
                outcome.output_tokens,
                outcome.reasoning_tokens,
            )
    return collected


def give_back(batch_id: str, lines: Sequence[ChunkLine], wait: float = 0.0) -> list[Outcome]:
    """Every line back to pending, no attempt spent (a chunk that never reached upstream)."""
    at = time.time() + wait
    return [
        Outcome(
            batch_id,
            item.line,
            item.epoch,
            RETRY,
            custom_id=item.custom_id,
            attempts=item.attempts,
            not_before=at,
        )
        for item in lines
    ]


def _outcome(
    claim: Claim,
    record: dict[str, Any] | None,
    unfinished: Unfinished,
    policy: outcomes.RetryPolicy,
    final: Callable[[int, Any], bool] | None,
) -> Outcome:
    response = record.get("response") if record is not None else None
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        body = response.get("body")
        reply = Reply(
            status=response["status_code"],
            body=orjson.dumps(body) if body is not None else b"",
            request_id=response.get("request_id")
            if isinstance(response.get("request_id"), str)
            else None,
        )
        return outcomes.from_reply(claim, reply, policy, final)
    error = record.get("error") if record is not None else None
    if isinstance(error, dict) and error.get("code") not in _UNRUN_CODES:
        code = str(error.get("code") or "upstream_error")
        message = str(error.get("message") or "The upstream could not run this request.")
        return Outcome(
            claim.batch_id,
            claim.line,
            claim.epoch,
            FAILED,
            custom_id=claim.custom_id,
            attempts=claim.attempts + 1,
            error_code=code,
            error_message=message,
        )
    if unfinished.give_back:
        return give_back_one(claim)
    return outcomes.from_unreachable(
        claim, Unreachable(unfinished.message, code=unfinished.code), policy
    )


def give_back_one(claim: Claim) -> Outcome:
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        RETRY,
        custom_id=claim.custom_id,
        attempts=claim.attempts,
        not_before=time.time(),
    )
