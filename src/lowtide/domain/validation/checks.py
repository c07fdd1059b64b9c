"""The checks of one line, step by step, and the problems they report (the order of point 8).

Problems are ``(code, param, message)`` tuples until the validator pins them to a line.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

TEST_MODEL = "batch-test-model"
TEST_ENDPOINT = "/v1/chat/ds-test"
# The order is the one used in messages that list the endpoints.
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/chat/ds-test",
)

# (code, param, message): a problem before it is pinned to a line. Tuples, not BatchError,
# because most lines have none and the hot path should build nothing it does not need.
Problem: TypeAlias = tuple[str, str | None, str]
# What orjson returns; the checks below narrow it field by field.
Json: TypeAlias = Any

_REQUIRED = ("custom_id", "method", "url", "body")
MAX_CUSTOM_ID = 512
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# User-supplied values echoed in messages are cut to this many characters: a 6 MB url repeated
# in 1,000 errors must not turn errors.data into gigabytes.
_MAX_ECHO = 256

NOT_JSON: Problem = ("invalid_json_line", None, "This line is not parseable as valid JSON.")
NO_MODEL: Problem = ("invalid_request", "body.model", "Model parameter is required.")
STREAMING: Problem = (
    "streaming_unsupported",
    "body.stream",
    "Chat Completions: Streaming is not supported in the Batch API.",
)
BAD_URL: Problem = (
    "invalid_url",
    "url",
    "The URL provided for this request does not match the batch endpoint.",
)
_MESSAGES = ("messages", ("invalid_request", "body.messages", "Messages parameter is required."))
_INPUT = ("input", ("invalid_request", "body.input", "Input parameter is required."))
# The body key each endpoint cannot do without, and the problem when it is absent. Chat needs a
# non-empty array of messages; the others a non-empty string or array (the finer shape is the
# backend's to judge, request by request, without failing the whole batch).
INPUT_OF: dict[str, tuple[str, Problem]] = {
    "/v1/chat/completions": _MESSAGES,
    TEST_ENDPOINT: _MESSAGES,
    "/v1/completions": (
        "prompt",
        ("invalid_request", "body.prompt", "Prompt parameter is required."),
    ),
    "/v1/embeddings": _INPUT,
    "/v1/responses": _INPUT,
}


def echo(value: str) -> str:
    return value if len(value) <= _MAX_ECHO else value[:_MAX_ECHO] + "..."


def _type_name(value: object) -> str:
    """The JSON type of ``value`` as OpenAI's ``invalid_type`` messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong_type(key: str, expected: str, value: object) -> Problem:
    message = f"Invalid type for '{key}': expected {expected}, but got {_type_name(value)} instead."
    return ("invalid_request", key, message)


def _check_custom_id(value: object) -> Problem | None:
    if not isinstance(value, str):
        return _wrong_type("custom_id", "a string", value)
    if not value:
        return ("invalid_request", "custom_id", "Invalid 'custom_id': expected a non-empty string.")
    if len(value) > MAX_CUSTOM_ID:
        message = (
            f"Invalid 'custom_id': string too long. Expected a string with maximum length "
            f"{MAX_CUSTOM_ID}, but got a string with length {len(value)} instead."
        )
        return ("invalid_request", "custom_id", message)
    if _CONTROL.search(value):
        message = (
            "Invalid 'custom_id': control characters (U+0000 to U+001F and U+007F) are not allowed."
        )
        return ("invalid_request", "custom_id", message)
    return None


def check_fields(obj: dict[str, Json]) -> Problem | None:
    """Steps 3 and 4: the four keys are present, then each has the right type."""
    for key in _REQUIRED:
        if key not in obj:
            return ("missing_required_parameter", key, f"Missing required parameter: '{key}'.")
    problem = _check_custom_id(obj["custom_id"])
    if problem is not None:
        return problem
    if not isinstance(obj["method"], str):
        return _wrong_type("method", "a string", obj["method"])
    if not isinstance(obj["url"], str):
        return _wrong_type("url", "a string", obj["url"])
    if not isinstance(obj["body"], dict):
        return _wrong_type("body", "an object", obj["body"])
    return None


def check_target(method: str, url: str) -> Problem | None:
    """Steps 5 and 6: POST to a url the Batch API knows."""
    if method != "POST":
        return ("invalid_method", "method", f"Only POST is supported, got '{echo(method)}'.")
    if url not in ENDPOINTS:
        message = f"The provided url '{echo(url)}' is not supported by the Batch API."
        return ("url_not_found", "url", message)
    return None


def input_types(key: str) -> tuple[type, ...]:
    return (list,) if key == "messages" else (str, list)


def has_input(key: str, value: Json) -> bool:
    return type(value) in input_types(key) and bool(value)
