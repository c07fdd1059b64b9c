"""The exact line formats of the output and error files (section 13 points 9-10)."""

from __future__ import annotations

import hashlib

import orjson

from lowtide.domain import ids
from lowtide.domain.work import RequestState, ResultRow

EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_CODE = "batch_cancelled"
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def line_id(batch_id: str, line: int) -> str:
    """``batch_req_<24 hex>``, derived from the batch and line so that writing the files again
    after a crash produces the very same bytes."""
    digest = hashlib.blake2b(f"{batch_id}:{line}".encode(), digest_size=12).hexdigest()
    return ids.REQUEST_PREFIX + digest


def render(batch_id: str, row: ResultRow, unrun: tuple[str, str] | None) -> tuple[bool, bytes]:
    """One result line (with its newline); the bool says whether it is an output-file line.

    ``unrun`` is the (code, message) for a request that never got an answer because the
    batch is ending (expired or cancelled).
    """
    if row.state == RequestState.SUCCEEDED:
        return True, _line(batch_id, row, error=None)
    if row.state == RequestState.FAILED:
        error = {"code": row.error_code or f"http_{row.status_code}", "message": row.error_message}
        return False, _line(batch_id, row, error=error)
    code, message = unrun or (EXPIRED_CODE, EXPIRED_MESSAGE)
    return False, _line(batch_id, row, error={"code": code, "message": message}, answered=False)


def _line(
    batch_id: str, row: ResultRow, error: dict[str, str | None] | None, answered: bool = True
) -> bytes:
    response = None
    if answered and row.status_code is not None:
        body = orjson.Fragment(row.body) if row.body is not None else None
        response = {"status_code": row.status_code, "request_id": row.request_id, "body": body}
    line = {
        "id": line_id(batch_id, row.line),
        "custom_id": row.custom_id,
        "response": response,
        "error": error,
    }
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
