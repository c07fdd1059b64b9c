"""Batch output and error JSONL -> one CSV, streaming: what ``lowtide convert jsonl-to-csv``
runs.

Both error shapes are read (``error.code`` as OpenAI and lowtide write it, ``error.error_code``
as the Model Studio script reads it). Memory stays flat whatever the file size, except for the
optional ``--input`` ordering index. Every error names the file and the 1-based line.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, TextIO

import orjson

# The one error type of both directions, defined with the first.
from lowtide.cli.convert_requests import ConvertError

__all__ = [
    "RESULT_COLUMNS",
    "CsvSummary",
    "ResultRow",
    "jsonl_to_csv",
    "ordered_result_rows",
    "result_row",
    "result_rows",
]

#: The columns of ``jsonl-to-csv``: those of the Model Studio script, in its order.
RESULT_COLUMNS: Final = (
    "custom_id",
    "model",
    "request_id",
    "status_code",
    "error_code",
    "error_message",
    "created",
    "content",
    "usage",
)


class ResultRow(NamedTuple):
    """One CSV row of ``jsonl-to-csv``; every cell is a string, empty when the path is missing."""

    custom_id: str
    model: str
    request_id: str
    status_code: str
    error_code: str
    error_message: str
    created: str
    content: str
    usage: str

    @property
    def failed(self) -> bool:
        ok_status = len(self.status_code) == 3 and self.status_code.startswith("2")
        return bool(self.error_code or self.error_message) or not ok_status


@dataclass(slots=True)
class CsvSummary:
    rows: int = 0
    failed: int = 0
    missing: int = 0  #: ids of the input file with no result line
    unknown: int = 0  #: result lines whose id is not in the input file


def result_row(record: object) -> ResultRow:
    """Flatten one output or error line. Never raises, whatever the shape."""
    response = _dig(record, "response")
    body = _dig(response, "body")
    status = _dig(response, "status_code")
    code, message = _error_fields(record, body, status)
    return ResultRow(
        custom_id=_cell(_dig(record, "custom_id")),
        model=_cell(_dig(body, "model")),
        request_id=_cell(_dig(response, "request_id")),
        status_code=_cell(status),
        error_code=_cell(code),
        error_message=_cell(message),
        created=_cell(_dig(body, "created")),
        content=_content(body),
        usage=_cell(_dig(body, "usage")),
    )


def _dig(node: object, *path: str | int) -> object:
    """``node[path[0]][path[1]]...``, or None as soon as a step does not fit the shape."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return None
            node = node[step]
        elif isinstance(node, dict):
            node = node.get(step)
        else:
            return None
    return node


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # Numbers, booleans and objects as compact JSON (the hosted script wrote a Python repr
    # for usage, which nothing can parse back).
    return orjson.dumps(value).decode()


def _first(*values: object) -> object:
    return next((value for value in values if value not in (None, "")), None)


def _error_fields(record: object, body: object, status: object) -> tuple[object, object]:
    error = _dig(record, "error")
    # OpenAI and lowtide write code/message; the Model Studio script reads error_code/_message.
    code = _first(_dig(error, "code"), _dig(error, "error_code"))
    message = _first(_dig(error, "message"), _dig(error, "error_message"))
    failed_status = isinstance(status, int) and status >= 400
    if code is None and message is None and failed_status:
        # OpenAI leaves the top-level error null when the model answered with an error.
        code, message = _dig(body, "error", "code"), _dig(body, "error", "message")
    return code, message


def _content(body: object) -> str:
    choice = _dig(body, "choices", 0)
    if isinstance(choice, dict):
        if "message" in choice:
            return _cell(_dig(choice, "message", "content"))
        return _cell(choice.get("text"))
    output = _dig(body, "output")
    if isinstance(output, list):
        return _output_text(output)
    return _embedding_length(_dig(body, "data", 0, "embedding"))


def _output_text(output: list[object]) -> str:
    """The Responses API text: every ``output[*].content[*].text``, joined as the SDK does."""
    parts = (_dig(part, "text") for item in output for part in _as_list(_dig(item, "content")))
    return "".join(part for part in parts if isinstance(part, str))


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _embedding_length(embedding: object) -> str:
    if isinstance(embedding, list):
        return str(len(embedding))
    if isinstance(embedding, str):  # encoding_format="base64": packed float32
        try:
            return str(len(base64.b64decode(embedding, validate=True)) // 4)
        except binascii.Error:
            return ""
    return ""


def _scan_jsonl(path: Path) -> Iterator[tuple[int, int, object]]:
    """Yield (1-based line number, byte offset, parsed value) for each non-blank line."""
    with path.open("rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            # Windows editors may start the file with a BOM, which is not JSON.
            raw = line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
            if raw.strip():
                yield number, start, _parse(raw, path, number)


def _parse(raw: bytes, path: Path, number: int, unit: str = "line") -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = f"not valid JSON ({exc.msg}, column {exc.colno})"
        raise ConvertError(reason, source=str(path), unit=unit, number=number) from exc


def result_rows(paths: Iterable[Path]) -> Iterator[ResultRow]:
    """Rows of every result file, in file order, streaming."""
    for path in paths:
        for _, _, record in _scan_jsonl(path):
            yield result_row(record)


# A list per id, not a single position, so that a duplicated id (say, in both the output and
# the error file) still gets all its rows.
_Index = dict[str, list[tuple[int, int]]]


def ordered_result_rows(
    paths: Sequence[Path], input_path: Path, summary: CsvSummary
) -> Iterator[ResultRow]:
    """Rows in the ``custom_id`` order of the batch input file.

    Results come back in completion order, so they must be reordered. Rather than hold rows
    (or whole lines), this keeps ``custom_id -> (file index, byte offset)`` for the result
    lines, about 150 bytes per line whatever the line size, then streams the input file and
    seeks to each result. The alternative (index the input, then sort the results) would need
    the results in memory or an external sort. Ids not in the input come last, in file order;
    input ids without a result are counted in ``summary.missing``.
    """
    index = _index_results(paths)
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(path.open("rb")) for path in paths]
        for custom_id in _input_ids(input_path):
            positions = index.pop(custom_id, None)
            if positions is None:
                summary.missing += 1
                continue
            yield from _rows_at(handles, paths, positions)
        for positions in index.values():
            summary.unknown += len(positions)
            yield from _rows_at(handles, paths, positions)


def _index_results(paths: Sequence[Path]) -> _Index:
    index: _Index = {}
    for file_index, path in enumerate(paths):
        for _, offset, record in _scan_jsonl(path):
            custom_id = _cell(_dig(record, "custom_id"))
            index.setdefault(custom_id, []).append((file_index, offset))
    return index


def _rows_at(
    handles: Sequence[io.BufferedReader], paths: Sequence[Path], positions: list[tuple[int, int]]
) -> Iterator[ResultRow]:
    for file_index, offset in positions:
        handle = handles[file_index]
        handle.seek(offset)
        raw = handle.readline()
        if offset == 0:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        # Already parsed once while indexing; a failure now means the file changed meanwhile.
        yield result_row(_parse(raw, paths[file_index], offset, unit="byte offset"))


def _input_ids(path: Path) -> Iterator[str]:
    for number, _, record in _scan_jsonl(path):
        custom_id = _dig(record, "custom_id")
        if custom_id is None:
            raise ConvertError("has no custom_id", source=str(path), unit="line", number=number)
        yield _cell(custom_id)


def jsonl_to_csv(
    paths: Sequence[Path], dst: TextIO, *, input_path: Path | None = None
) -> CsvSummary:
    """Write the header and one row per result line to ``dst`` (opened with ``newline=""``)."""
    summary = CsvSummary()
    writer = csv.writer(dst)
    writer.writerow(RESULT_COLUMNS)
    if input_path is None:
        rows = result_rows(paths)
    else:
        rows = ordered_result_rows(paths, input_path, summary)
    for row in rows:
        writer.writerow(row)
        summary.rows += 1
        summary.failed += row.failed
    return summary
