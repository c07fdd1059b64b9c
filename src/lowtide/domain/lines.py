"""The exact line formats of the output and error files (docs/api-compatibility.md,
"Result lines").

A request's result line is rendered once, when its outcome is recorded, and stored as is:
finalisation then only concatenates stored lines in line order (and renders the lines of
requests that never ran). Rendering at commit time spreads the work over the dispatch instead
of doing all of it at the end (finalising 50,000 results took 13× one sequential
write when every line was rendered there).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from lowtide.domain import ids
from lowtide.domain.work import FAILED, SUCCEEDED, Outcome

EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_CODE = "batch_cancelled"
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def line_id(batch_id: str, line: int) -> str:
    """``batch_req_<24 hex>``, derived from the batch and line so that writing the files again
    after a crash produces the very same bytes."""
    digest = hashlib.blake2b(f"{batch_id}:{line}".encode(), digest_size=12).hexdigest()
    return ids.REQUEST_PREFIX + digest


def outcome_line(o: Outcome) -> bytes | None:
    """The result line of a final outcome (with its newline); None for a retry."""
    if o.kind not in (SUCCEEDED, FAILED):
        return None
    return answered_line(
        o.batch_id,
        o.line,
        o.custom_id,
        succeeded=o.kind == SUCCEEDED,
        status_code=o.status_code,
        request_id=o.request_id,
        body=o.body,
        error_code=o.error_code,
        error_message=o.error_message,
        sent_body=o.sent_body,
    )


def answered_line(
    batch_id: str,
    line: int,
    custom_id: str,
    *,
    succeeded: bool,
    status_code: int | None,
    request_id: str | None,
    body: bytes | None,
    error_code: str | None,
    error_message: str | None,
    sent_body: bytes | None = None,
) -> bytes:
    """The line of a request that reached a final outcome: an output-file line when it
    ``succeeded``, an error-file line otherwise. ``body`` is the backend's answer as compact
    JSON (or None when it was not JSON); ``sent_body``, the request body as sent, is added
    as the key ``sent_body`` after the others when given (an extension: readers that do not
    know it see the usual line)."""
    response = None
    if status_code is not None:
        response = {
            "status_code": status_code,
            "request_id": request_id,
            "body": orjson.Fragment(body) if body is not None else None,
        }
    error = None
    if not succeeded:
        error = {"code": error_code or f"http_{status_code}", "message": error_message}
    return _dump(batch_id, line, custom_id, response, error, sent_body)


def unrun_line(batch_id: str, line: int, custom_id: str, unrun: tuple[str, str] | None) -> bytes:
    """The error-file line of a request that never got an answer because its batch ended:
    ``unrun`` is the (code, message) of that end (expired by default)."""
    code, message = unrun or (EXPIRED_CODE, EXPIRED_MESSAGE)
    return _dump(batch_id, line, custom_id, None, {"code": code, "message": message})


def _dump(
    batch_id: str,
    line: int,
    custom_id: str,
    response: dict[str, Any] | None,
    error: dict[str, str | None] | None,
    sent_body: bytes | None = None,
) -> bytes:
    record: dict[str, Any] = {
        "id": line_id(batch_id, line),
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    if sent_body is not None:
        record["sent_body"] = orjson.Fragment(sent_body)
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
