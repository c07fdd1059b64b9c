"""Validation of a batch input file, pure and streaming (docs/api-compatibility.md,
"Validation codes").

The engine feeds the bytes of an uploaded JSONL file in chunks of any size and calls ``finish``::

    validator = Validator(endpoint, served_models)
    for chunk in chunks:
        validator.feed(chunk)
    result = validator.finish()   # result.requests, or result.errors when not result.ok

Each line gets at most one error, the first problem found in the order of point 8. The validator
keeps only the current partial line (never more than ``max_line_bytes + 1`` of it), the custom_ids
seen and the list of ``RequestLine``; lines past the line limit are still checked, but neither
stored nor remembered, so memory stays bounded by the limits whatever the file holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from lowtide.domain.prefix import PrefixOrder

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


@dataclass(frozen=True, slots=True)
class Limits:
    max_lines: int = 50_000
    max_file_bytes: int = 500 * 1024 * 1024
    max_line_bytes: int = 6 * 1024 * 1024
    test_max_lines: int = 100
    test_max_file_bytes: int = 1024 * 1024
    max_errors: int = 1_000


@dataclass(frozen=True, slots=True)
class BatchError:
    """One entry of the batch's ``errors.data``."""

    code: str
    message: str
    param: str | None
    line: int | None  # 1-based physical line; None for a file-level error

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One valid request: where its JSON text lies in the input file."""

    line: int  # 1-based physical line number
    custom_id: str
    offset: int  # byte offset of the line's first byte in the file
    length: int  # byte length of the JSON text, without the trailing \n or \r\n
    send_order: int = 0  # rank in the order of sending (lowtide.domain.prefix); 0: file order
    prefix_group: int = 0  # id of the shared prompt prefix it is sent with; 0: none


@dataclass(slots=True)
class Validation:
    requests: list[RequestLine]
    errors: list[BatchError]  # file-level errors first, then line errors by line; capped
    model: str | None  # the batch's single model, None if no line got that far
    total_bytes: int

    @property
    def ok(self) -> bool:
        return not self.errors


# RequestLine is frozen, and a frozen dataclass's __init__ sets each field through
# object.__setattr__, which costs more per line than everything but the JSON parse. The hot
# path fills the slots through their descriptors instead: same object, about half the cost.
_new_object = object.__new__
_slot = RequestLine.__dict__  # the slot descriptors, looked up once
_set_line: Callable[[RequestLine, int], None] = _slot["line"].__set__
_set_custom_id: Callable[[RequestLine, str], None] = _slot["custom_id"].__set__
_set_offset: Callable[[RequestLine, int], None] = _slot["offset"].__set__
_set_length: Callable[[RequestLine, int], None] = _slot["length"].__set__
_set_send_order: Callable[[RequestLine, int], None] = _slot["send_order"].__set__
_set_prefix_group: Callable[[RequestLine, int], None] = _slot["prefix_group"].__set__


def _request_line(line: int, custom_id: str, offset: int, length: int) -> RequestLine:
    """``RequestLine(line, custom_id, offset, length)``, faster (see above)."""
    request = _new_object(RequestLine)
    _set_line(request, line)
    _set_custom_id(request, custom_id)
    _set_offset(request, offset)
    _set_length(request, length)
    _set_send_order(request, 0)
    _set_prefix_group(request, 0)
    return request


# (code, param, message): a problem before it is pinned to a line. Tuples, not BatchError,
# because most lines have none and the hot path should build nothing it does not need.
_Problem: TypeAlias = tuple[str, str | None, str]
# What orjson returns; the checks below narrow it field by field.
_Json: TypeAlias = Any

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_REQUIRED = ("custom_id", "method", "url", "body")
_MAX_CUSTOM_ID = 512
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# User-supplied values echoed in messages are cut to this many characters: a 6 MB url repeated
# in 1,000 errors must not turn errors.data into gigabytes.
_MAX_ECHO = 256
# At most this many distinct model names are remembered from served_models(): a hostile file
# naming a new model per line must not grow the cache without bound.
_MAX_CACHED_MODELS = 64

_NOT_JSON: _Problem = ("invalid_json_line", None, "This line is not parseable as valid JSON.")
_NO_MODEL: _Problem = ("invalid_request", "body.model", "Model parameter is required.")
_STREAMING: _Problem = (
    "streaming_unsupported",
    "body.stream",
    "Chat Completions: Streaming is not supported in the Batch API.",
)
_BAD_URL: _Problem = (
    "invalid_url",
    "url",
    "The URL provided for this request does not match the batch endpoint.",
)
_MESSAGES = ("messages", ("invalid_request", "body.messages", "Messages parameter is required."))
_INPUT = ("input", ("invalid_request", "body.input", "Input parameter is required."))
# The body key each endpoint cannot do without, and the problem when it is absent. Chat needs a
# non-empty array of messages; the others a non-empty string or array (the finer shape is the
# backend's to judge, request by request, without failing the whole batch).
_INPUT_OF: dict[str, tuple[str, _Problem]] = {
    "/v1/chat/completions": _MESSAGES,
    TEST_ENDPOINT: _MESSAGES,
    "/v1/completions": (
        "prompt",
        ("invalid_request", "body.prompt", "Prompt parameter is required."),
    ),
    "/v1/embeddings": _INPUT,
    "/v1/responses": _INPUT,
}


def _echo(value: str) -> str:
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


def _wrong_type(key: str, expected: str, value: object) -> _Problem:
    message = f"Invalid type for '{key}': expected {expected}, but got {_type_name(value)} instead."
    return ("invalid_request", key, message)


def _check_custom_id(value: object) -> _Problem | None:
    if not isinstance(value, str):
        return _wrong_type("custom_id", "a string", value)
    if not value:
        return ("invalid_request", "custom_id", "Invalid 'custom_id': expected a non-empty string.")
    if len(value) > _MAX_CUSTOM_ID:
        message = (
            f"Invalid 'custom_id': string too long. Expected a string with maximum length "
            f"{_MAX_CUSTOM_ID}, but got a string with length {len(value)} instead."
        )
        return ("invalid_request", "custom_id", message)
    if _CONTROL.search(value):
        message = (
            "Invalid 'custom_id': control characters (U+0000 to U+001F and U+007F) are not allowed."
        )
        return ("invalid_request", "custom_id", message)
    return None


def _check_fields(obj: dict[str, _Json]) -> _Problem | None:
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


def _check_target(method: str, url: str) -> _Problem | None:
    """Steps 5 and 6: POST to a url the Batch API knows."""
    if method != "POST":
        return ("invalid_method", "method", f"Only POST is supported, got '{_echo(method)}'.")
    if url not in ENDPOINTS:
        message = f"The provided url '{_echo(url)}' is not supported by the Batch API."
        return ("url_not_found", "url", message)
    return None


def _input_types(key: str) -> tuple[type, ...]:
    return (list,) if key == "messages" else (str, list)


def _has_input(key: str, value: _Json) -> bool:
    return type(value) in _input_types(key) and bool(value)


class Validator:
    """Streaming validator of one batch input file; see the module docstring."""

    def __init__(
        self,
        endpoint: str,
        served_models: Callable[[str], bool],
        limits: Limits = Limits(),  # frozen, so one shared default is safe
        *,
        prefix_order: bool = True,
    ) -> None:
        self._endpoint = endpoint
        self._served_models = served_models
        self._limits = limits
        test = endpoint == TEST_ENDPOINT
        self._max_lines = limits.test_max_lines if test else limits.max_lines
        self._max_file_bytes = limits.test_max_file_bytes if test else limits.max_file_bytes
        self._max_line_bytes = limits.max_line_bytes
        # For the fast path: the body key this endpoint needs, and the types it may have.
        self._input_key = _INPUT_OF[endpoint][0] if endpoint in _INPUT_OF else "messages"
        self._input_types = _input_types(self._input_key)
        self._requests: list[RequestLine] = []
        # Each stored line's prefix key, to rank the lines at the end (None: file order).
        self._order = PrefixOrder(endpoint) if prefix_order else None
        self._errors: list[BatchError] = []  # line errors only; file-level ones come at finish
        self._full = limits.max_errors <= 0  # once the cap is hit, lines are only counted
        self._ids: set[str] = set()
        self._model: str | None = None
        self._served_cache: dict[str, bool] = {}
        self._total = 0  # bytes fed, BOM included
        self._lineno = 0  # physical lines completed
        self._count = 0  # non-blank lines: the requests the file means to hold
        # The first bytes are held until we know whether they open with a BOM (None: decided).
        self._head: bytes | None = b""
        # The current partial line: its pieces, joined once at its newline (never re-copied per
        # chunk), its file offset and length so far, and whether it is too long to keep.
        self._pieces: list[bytes] = []
        self._start = 0
        self._partial = 0
        self._skipping = False
        self._last_byte = 0  # last byte of the partial line, to spot a \r\n ending when skipping
        self._finished = False

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self._finished:
            raise RuntimeError("Validator.feed() called after finish()")
        self._total += len(chunk)
        if self._head is not None:
            chunk = self._skip_bom(self._head, chunk)
        if chunk:
            self._split(chunk)

    def finish(self) -> Validation:
        if self._finished:
            raise RuntimeError("Validator.finish() called twice")
        self._finished = True
        if self._head:  # a file shorter than a BOM that starts like one: it is content
            self._extend(self._head)
        self._head = None
        if self._partial:  # the last line had no trailing newline
            self._end_partial()
        errors = self._file_errors() + self._errors
        del errors[self._limits.max_errors :]
        if self._order is not None and not errors:
            self._apply_order(self._order)
        return Validation(self._requests, errors, self._model, self._total)

    def _apply_order(self, order: PrefixOrder) -> None:
        """Give each request its rank in the order of sending and its prefix group."""
        ranks, groups = order.ranks()
        for request, rank, group in zip(self._requests, ranks, groups, strict=True):
            _set_send_order(request, rank)
            _set_prefix_group(request, group)

    def _skip_bom(self, head: bytes, chunk: bytes) -> bytes:
        """Hold bytes until 3 are known, then drop a leading UTF-8 BOM (orjson rejects it)."""
        data = head + chunk if head else chunk
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._head = data
            return b""
        self._head = None
        if data.startswith(_BOM):
            self._start = len(_BOM)  # offsets stay file offsets
            return data[len(_BOM) :]
        return data

    def _split(self, chunk: bytes) -> None:
        # One C-level split per chunk: parts[0] ends the pending line, parts[-1] starts the next.
        parts = chunk.split(b"\n")
        self._extend(parts[0])
        if len(parts) == 1:
            return
        self._end_partial()
        offset = self._start
        check = self._line
        for i in range(1, len(parts) - 1):
            raw = parts[i]
            check(raw, offset)
            offset += len(raw) + 1
        self._start = offset
        self._extend(parts[-1])

    def _extend(self, piece: bytes) -> None:
        if not piece:
            return
        self._partial += len(piece)
        self._last_byte = piece[-1]
        if self._skipping:
            return
        # max_line_bytes + 1, not + 0: the extra byte may be the \r of a \r\n ending.
        if self._partial > self._max_line_bytes + 1:
            self._skipping = True
            self._pieces.clear()
            return
        self._pieces.append(piece)

    def _end_partial(self) -> None:
        """The pending line got its newline (or the file ended): check it, start the next."""
        start, length = self._start, self._partial
        if self._skipping:
            self._lineno += 1
            self._count += 1
            self._too_large(length - (self._last_byte == _CR))
        else:
            pieces = self._pieces
            raw = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._line(raw, start)
        self._pieces = []
        self._partial = 0
        self._skipping = False
        self._start = start + length + 1

    # -- one line --------------------------------------------------------------------------

    def _line(self, raw: bytes, offset: int) -> None:
        """Check one complete physical line, \\n removed (a trailing \\r may remain).

        Framing, parsing and storing are in one function on purpose: this runs once per line
        of files of 50,000 lines, and each Python call saved is measurable.
        """
        self._lineno += 1
        length = len(raw)
        if length and raw[-1] == _CR:
            length -= 1  # orjson ignores the \r as whitespace; no copy needed to strip it
        if length > self._max_line_bytes:
            # Checked before blankness, as it must be when the line was too long to keep.
            self._count += 1
            self._too_large(length)
            return
        if not length or raw.isspace():
            return  # blank: not a request, but it still took a line number
        self._count += 1
        if self._full:
            return  # no room for more errors: the lines are only counted
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._report(_NOT_JSON)
            return
        custom_id = self._fast_path(obj) or self._slow_path(obj)
        if custom_id is not None and self._count <= self._max_lines:
            # Past the line limit the batch fails anyway: keep nothing, so memory stays bounded.
            self._ids.add(custom_id)
            self._requests.append(_request_line(self._lineno, custom_id, offset, length))
            if self._order is not None:
                self._order.add(raw, obj["body"], length)

    def _too_large(self, length: int) -> None:
        message = (
            f"This line is {length:,} bytes, more than the limit of "
            f"{self._max_line_bytes:,} bytes per line."
        )
        self._report(("line_too_large", None, message))

    def _fast_path(self, obj: _Json) -> str | None:
        """The custom_id of a line that certainly passes every check, else None.

        Most lines of a good file are alike, so one flat test that they match the batch's
        model and endpoint saves the step-by-step walk. It is sound, not complete: whatever it
        does not accept goes to ``_slow_path``, which finds the first problem in order (or none:
        the first line, a custom_id with non-printable but allowed characters...).
        """
        if type(obj) is not dict:
            return None
        custom_id = obj.get("custom_id")
        body = obj.get("body")
        if not (
            type(custom_id) is str
            and type(body) is dict
            and 0 < len(custom_id) <= _MAX_CUSTOM_ID
            and custom_id.isprintable()  # no control characters (nor some harmless ones)
            and obj.get("method") == "POST"
            and obj.get("url") == self._endpoint
            # A set model passed steps 7, 9 and 11 with this endpoint; equal, it passes them too.
            and self._model is not None
            and body.get("model") == self._model
            and not body.get("stream")
            and custom_id not in self._ids
        ):
            return None
        value = body.get(self._input_key)
        return custom_id if type(value) in self._input_types and value else None

    def _slow_path(self, obj: _Json) -> str | None:
        """Check a line step by step; report its first problem, or return its custom_id."""
        if not isinstance(obj, dict):
            self._report(_NOT_JSON)
            return None
        problem = _check_fields(obj)
        if problem is not None:
            self._report(problem)
            return None
        custom_id: str = obj["custom_id"]
        url: str = obj["url"]
        problem = _check_target(obj["method"], url) or self._check_body(url, obj["body"])
        if problem is None:
            if custom_id not in self._ids:
                return custom_id
            problem = self._duplicate(custom_id)
        elif self._count <= self._max_lines:
            # A line that fails still claims its custom_id: a later line reusing it is a real
            # duplicate, which would still fail once this line is fixed.
            self._ids.add(custom_id)
        self._report(problem)
        return None

    def _check_body(self, url: str, body: dict[str, _Json]) -> _Problem | None:
        """Steps 7 to 12: test-model pairing, batch endpoint, model, input, stream, model."""
        model = body.get("model")
        if (model == TEST_MODEL) != (url == TEST_ENDPOINT):
            # The hosted sentence as it is, then one that says which URL would be right.
            right = (
                f"The test model is served on '{TEST_ENDPOINT}' only."
                if model == TEST_MODEL
                else f"'{TEST_ENDPOINT}' serves only '{TEST_MODEL}'; use the batch's endpoint."
            )
            message = (
                f"The provided URL '{_echo(url)}' does not match the test model '{TEST_MODEL}'. "
                + right
            )
            return ("mismatched_test_url", "url", message)
        if url != self._endpoint:
            return _BAD_URL
        if not isinstance(model, str) or not model:
            return _NO_MODEL
        key, missing = _INPUT_OF[url]
        if not _has_input(key, body.get(key)):
            return missing
        if body.get("stream"):
            return _STREAMING
        if not self._is_served(model):
            message = f"The provided model '{_echo(model)}' is not supported by the Batch API."
            return ("model_not_found", "body.model", message)
        if self._model is None:
            self._model = model  # the first line to get this far sets the batch's model
        elif model != self._model:
            message = (
                f"The model '{_echo(model)}' for this request does not match the rest of the "
                "batch. Each batch must contain requests for a single model."
            )
            return ("mismatched_model", "body.model", message)
        return None

    def _is_served(self, model: str) -> bool:
        if model == TEST_MODEL:
            # Only reached on the test endpoint (step 7), where it is always served; backends
            # are never asked about it.
            return True
        served = self._served_cache.get(model)
        if served is None:
            served = self._served_models(model)
            if len(self._served_cache) < _MAX_CACHED_MODELS:
                self._served_cache[model] = served
        return served

    @staticmethod
    def _duplicate(custom_id: str) -> _Problem:
        message = (
            f"The custom_id '{custom_id}' for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch."
        )
        return ("duplicate_custom_id", "custom_id", message)

    def _report(self, problem: _Problem) -> None:
        if self._full:
            return
        code, param, message = problem
        self._errors.append(BatchError(code, message, param, self._lineno))
        if len(self._errors) >= self._limits.max_errors:
            self._full = True

    # -- the whole file --------------------------------------------------------------------

    def _file_errors(self) -> list[BatchError]:
        errors: list[BatchError] = []
        test = self._endpoint == TEST_ENDPOINT
        scope = f" for the test model '{TEST_MODEL}'" if test else " per batch"
        if self._total > self._max_file_bytes:
            message = (
                f"The input file is {self._total:,} bytes, more than the limit of "
                f"{self._max_file_bytes:,} bytes{scope}."
            )
            errors.append(BatchError("file_too_large", message, None, None))
        if self._count > self._max_lines:
            message = (
                f"The input file has {self._count:,} requests, more than the limit of "
                f"{self._max_lines:,} requests{scope}."
            )
            errors.append(BatchError("too_many_tasks", message, None, None))
        if self._count == 0:
            message = (
                "The input file is empty. Please ensure that the batch contains at least "
                "one request."
            )
            errors.append(BatchError("empty_file", message, None, None))
        return errors
