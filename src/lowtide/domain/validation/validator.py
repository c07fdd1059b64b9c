"""The streaming validator of one batch input file (see ``lowtide.domain.validation``)."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from lowtide.domain.prefix import PrefixOrder
from lowtide.domain.validation.checks import (
    BAD_URL,
    INPUT_OF,
    MAX_CUSTOM_ID,
    NO_MODEL,
    NOT_JSON,
    STREAMING,
    TEST_ENDPOINT,
    TEST_MODEL,
    Json,
    Problem,
    check_fields,
    check_target,
    echo,
    has_input,
    input_types,
)
from lowtide.domain.validation.results import (
    BatchError,
    Limits,
    RequestLine,
    Validation,
    new_request_line,
    set_prefix_group,
    set_send_order,
)

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
# At most this many distinct model names are remembered from served_models(): a hostile file
# naming a new model per line must not grow the cache without bound.
_MAX_CACHED_MODELS = 64
# Frozen, so one shared default is safe.
_DEFAULT_LIMITS = Limits()


class Validator:
    """Streaming validator of one batch input file; see ``lowtide.domain.validation``."""

    def __init__(
        self,
        endpoint: str,
        served_models: Callable[[str], bool],
        limits: Limits = _DEFAULT_LIMITS,
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
        self._input_key = INPUT_OF[endpoint][0] if endpoint in INPUT_OF else "messages"
        self._input_types = input_types(self._input_key)
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
            set_send_order(request, rank)
            set_prefix_group(request, group)

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
            self._report(NOT_JSON)
            return
        custom_id = self._fast_path(obj) or self._slow_path(obj)
        if custom_id is not None and self._count <= self._max_lines:
            # Past the line limit the batch fails anyway: keep nothing, so memory stays bounded.
            self._ids.add(custom_id)
            self._requests.append(new_request_line(self._lineno, custom_id, offset, length))
            if self._order is not None:
                self._order.add(raw, obj["body"], length)

    def _too_large(self, length: int) -> None:
        message = (
            f"This line is {length:,} bytes, more than the limit of "
            f"{self._max_line_bytes:,} bytes per line."
        )
        self._report(("line_too_large", None, message))

    def _fast_path(self, obj: Json) -> str | None:
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
            and 0 < len(custom_id) <= MAX_CUSTOM_ID
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

    def _slow_path(self, obj: Json) -> str | None:
        """Check a line step by step; report its first problem, or return its custom_id."""
        if not isinstance(obj, dict):
            self._report(NOT_JSON)
            return None
        problem = check_fields(obj)
        if problem is not None:
            self._report(problem)
            return None
        custom_id: str = obj["custom_id"]
        url: str = obj["url"]
        problem = check_target(obj["method"], url) or self._check_body(url, obj["body"])
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

    def _check_body(self, url: str, body: dict[str, Json]) -> Problem | None:
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
                f"The provided URL '{echo(url)}' does not match the test model '{TEST_MODEL}'. "
                + right
            )
            return ("mismatched_test_url", "url", message)
        if url != self._endpoint:
            return BAD_URL
        if not isinstance(model, str) or not model:
            return NO_MODEL
        key, missing = INPUT_OF[url]
        if not has_input(key, body.get(key)):
            return missing
        if body.get("stream"):
            return STREAMING
        if not self._is_served(model):
            message = f"The provided model '{echo(model)}' is not supported by the Batch API."
            return ("model_not_found", "body.model", message)
        if self._model is None:
            self._model = model  # the first line to get this far sets the batch's model
        elif model != self._model:
            message = (
                f"The model '{echo(model)}' for this request does not match the rest of the "
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
    def _duplicate(custom_id: str) -> Problem:
        message = (
            f"The custom_id '{custom_id}' for this request is a duplicate of another request. "
            "The custom_id parameter must be unique for each request in a batch."
        )
        return ("duplicate_custom_id", "custom_id", message)

    def _report(self, problem: Problem) -> None:
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
