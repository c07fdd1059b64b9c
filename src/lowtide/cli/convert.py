"""Streaming CSV <-> JSONL converters for batch files, and the ``lowtide convert`` commands.

``csv-to-jsonl`` writes the same lines as the script the hosted products hand out (column 0 is
the ``custom_id``, column 1 the user text, compact JSON with non-ASCII kept), with options for
headers, other endpoints and extra body parameters. ``jsonl-to-csv`` flattens output and error
files into one spreadsheet, reading both error shapes (``error.code`` as OpenAI and lowtide
write it, ``error.error_code`` as the Model Studio script reads it).

Both directions stream: memory stays flat whatever the file size, except for the set of ids
kept to catch duplicates and the optional ``--input`` ordering index. Every error names the
file and the 1-based row or line.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, NamedTuple, TextIO

import click
import orjson

from lowtide.cli.atomic import atomic_file

__all__ = [
    "RESULT_COLUMNS",
    "TEXT_KEYS",
    "ConvertError",
    "CsvSummary",
    "RequestTemplate",
    "ResultRow",
    "convert_group",
    "csv_requests",
    "csv_to_jsonl",
    "jsonl_to_csv",
    "ordered_result_rows",
    "parse_params",
    "result_row",
    "result_rows",
    "utf8_lines",
    "write_jsonl",
]

#: The body key that carries the CSV text, per endpoint.
TEXT_KEYS: Final[Mapping[str, str]] = {
    "/v1/chat/completions": "messages",
    "/v1/chat/ds-test": "messages",
    "/v1/embeddings": "input",
    "/v1/completions": "prompt",
    "/v1/responses": "input",
}

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

# A batch line may be up to 6 MB (batch-api.md §13.8); the csv module's default field limit
# (128 KiB) would reject long prompts that the server accepts.
_MAX_FIELD: Final = 6 * 1024 * 1024


class ConvertError(ValueError):
    """A row or line that cannot be converted. The message names the file and the position."""

    def __init__(self, message: str, *, source: str, unit: str, number: int) -> None:
        self.source = source
        self.number = number
        super().__init__(f"{source}: {unit} {number}: {message}")


# --------------------------------------------------------------------------- CSV -> JSONL


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """Everything a request line holds apart from its ``custom_id`` and text."""

    model: str
    url: str = "/v1/chat/completions"
    system: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.url not in TEXT_KEYS:
            raise ValueError(f"unsupported url {self.url!r}; use one of {', '.join(TEXT_KEYS)}")
        if self.system is not None and self._system_key is None:
            raise ValueError(f"a system prompt does not apply to {self.url}")
        taken = {"model", TEXT_KEYS[self.url], self._system_key}
        clash = sorted(key for key in self.params if key in taken)
        if clash:
            raise ValueError(f"--param cannot set {', '.join(clash)}: the converter sets it")

    @property
    def _system_key(self) -> str | None:
        # Chat puts the system prompt in ``messages``; Responses has ``instructions`` for it.
        if self.url == "/v1/responses":
            return "instructions"
        return "messages" if TEXT_KEYS[self.url] == "messages" else None

    def request(self, custom_id: str, text: str) -> dict[str, Any]:
        # Key order as in the hosted script, so default output matches it byte for byte.
        return {"custom_id": custom_id, "method": "POST", "url": self.url, "body": self.body(text)}

    def body(self, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model}
        key = TEXT_KEYS[self.url]
        if key == "messages":
            system = [] if self.system is None else [{"role": "system", "content": self.system}]
            body["messages"] = [*system, {"role": "user", "content": text}]
        else:
            if self.system is not None:
                body["instructions"] = self.system
            body[key] = text
        body.update(self.params)
        return body


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``["temperature=0.2", "stop=x"]`` -> ``{"temperature": 0.2, "stop": "x"}``.

    A value is JSON when it parses as JSON, else the raw string. NaN and Infinity stay strings:
    they parse in Python but would make the output line invalid JSON.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        params[key] = _json_or_string(raw)
    return params


def _json_or_string(raw: str) -> Any:
    def reject(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(raw, parse_constant=reject)
    except ValueError:  # JSONDecodeError is a ValueError too
        return raw


def csv_requests(
    src: Iterable[str],
    template: RequestTemplate,
    *,
    id_column: str | int = 0,
    text_column: str | int = 1,
    header: bool = False,
    source: str = "<csv>",
) -> Iterator[dict[str, Any]]:
    """Yield one batch request per CSV row, streaming.

    ``src`` is ``utf8_lines(binary_file)``, or a text file opened with ``newline=""``.
    Columns are 0-based indexes, or header names when ``header`` is true. Blank rows are
    skipped; a short row, an empty or a duplicate ``custom_id`` raises ``ConvertError`` naming
    the 1-based row (the header counts as row 1).
    """
    rows = _numbered_rows(src, source)
    names = next(rows, (0, None))[1] if header else None
    if header and names is None:
        return  # an empty file has no header and no requests
    id_index = _column_index(id_column, names)
    text_index = _column_index(text_column, names)
    seen: set[str] = set()  # ids only, never rows: the one thing that grows with the file
    for number, row in rows:
        if not row:
            continue
        custom_id, text = _pick(row, id_index, text_index, source, number)
        if custom_id in seen:
            raise _row_error(f"duplicate custom_id {custom_id!r}", source, number)
        seen.add(custom_id)
        yield template.request(custom_id, text)


def _row_error(message: str, source: str, number: int) -> ConvertError:
    return ConvertError(message, source=source, unit="row", number=number)


def utf8_lines(lines: Iterable[bytes], source: str = "<csv>") -> Iterator[str]:
    """Decode a binary file line by line, dropping a leading BOM.

    Decoding per line, rather than through a text stream (which decodes 8 KB blocks ahead of
    the csv reader), is what lets a bad byte be reported at its own line.
    """
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"not UTF-8 text (byte {exc.start + 1} of the line)"
            raise ConvertError(reason, source=source, unit="line", number=number) from exc
        yield line.removeprefix("\ufeff") if number == 1 else line


def _numbered_rows(src: Iterable[str], source: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based row number, row); CSV syntax errors name the row."""
    # strict: an unterminated quote is an error, not a field that swallows every row after it.
    reader = csv.reader(src, strict=True)
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _row_error(f"cannot read CSV: {exc}", source, number + 1) from exc
        number += 1
        yield number, row


def _column_index(spec: str | int, names: Sequence[str] | None) -> int:
    if names is not None and isinstance(spec, str) and spec in names:
        return names.index(spec)
    try:
        index = int(spec)
    except ValueError:
        if names is None:
            raise ValueError(
                f"column {spec!r} is not a 0-based index (use --header to pick columns by name)"
            ) from None
        raise ValueError(f"column {spec!r} is not in the header: {', '.join(names)}") from None
    if index < 0:
        raise ValueError(f"column index must be 0 or more, got {index}")
    return index


def _pick(
    row: list[str], id_index: int, text_index: int, source: str, number: int
) -> tuple[str, str]:
    needed = max(id_index, text_index) + 1
    if len(row) < needed:
        raise _row_error(f"has {len(row)} column(s), needs at least {needed}", source, number)
    custom_id = row[id_index]
    if not custom_id.strip():
        raise _row_error(f"empty custom_id in column {id_index}", source, number)
    return custom_id, row[text_index]


def write_jsonl(records: Iterable[Mapping[str, Any]], dst: TextIO) -> int:
    """Write one compact JSON object per line, non-ASCII kept; return the line count."""
    count = 0
    for record in records:
        # stdlib json, not orjson: the same bytes as the hosted script's json.dumps call.
        dst.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
        dst.write("\n")
        count += 1
    return count


def csv_to_jsonl(
    src: Iterable[str],
    dst: TextIO,
    template: RequestTemplate,
    *,
    id_column: str | int = 0,
    text_column: str | int = 1,
    header: bool = False,
    source: str = "<csv>",
) -> int:
    """Convert a CSV stream to a batch JSONL stream (see ``csv_requests``); return the count."""
    requests = csv_requests(
        src, template, id_column=id_column, text_column=text_column, header=header, source=source
    )
    return write_jsonl(requests, dst)


# --------------------------------------------------------------------------- JSONL -> CSV


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


# --------------------------------------------------------------------------- files


def _open_binary(path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    # Never close the process's stdin.
    return contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb")


@contextlib.contextmanager
def _open_output(path: str, encoding: str, newline: str) -> Iterator[TextIO]:
    """stdout for ``-``; otherwise a temporary file renamed over ``path`` only on success, so
    that a conversion stopped by a bad row leaves no half-written file that looks complete."""
    if path == "-":
        stream = io.TextIOWrapper(sys.stdout.buffer, encoding=encoding, newline=newline)
        try:
            yield stream
        finally:
            stream.flush()
            stream.detach()
        return
    with atomic_file(Path(path)) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline=newline)
        try:
            yield text
        finally:
            text.flush()
            text.detach()  # atomic_file closes the file itself


def _destination(path: str) -> str:
    return "stdout" if path == "-" else path


# --------------------------------------------------------------------------- commands


@click.group(name="convert")
def convert_group() -> None:
    """Convert between CSV spreadsheets and batch JSONL files."""


_OUTPUT = click.option(
    "-o",
    "--output",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Output file; '-' (the default) writes to stdout.",
)


@convert_group.command("csv-to-jsonl")
@click.argument(
    "src", metavar="IN.csv", type=click.Path(exists=True, dir_okay=False, allow_dash=True)
)
@_OUTPUT
@click.option("--model", required=True, help="The body.model of every request.")
@click.option("--system", default=None, help="System prompt (chat) or instructions (responses).")
@click.option(
    "--url",
    type=click.Choice(list(TEXT_KEYS)),
    default="/v1/chat/completions",
    show_default=True,
    help="Endpoint of every request; decides the body key for the text.",
)
@click.option(
    "--id-column",
    default="0",
    show_default=True,
    metavar="COL",
    help="custom_id column: a 0-based index, or a name with --header.",
)
@click.option(
    "--text-column",
    default="1",
    show_default=True,
    metavar="COL",
    help="Text column: a 0-based index, or a name with --header.",
)
@click.option(
    "--header/--no-header",
    default=False,
    show_default=True,
    help="The first row is a header; columns may then be given by name.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra body parameter, repeatable; VALUE is JSON when it parses, else a string.",
)
def csv_to_jsonl_command(
    src: str,
    output: str,
    model: str,
    system: str | None,
    url: str,
    id_column: str,
    text_column: str,
    header: bool,
    params: tuple[str, ...],
) -> None:
    """Turn a CSV of (custom_id, text) rows into a batch input JSONL file.

    By default column 0 is the custom_id, column 1 the user message, and there is no header:
    the same lines as the Model Studio conversion script. A UTF-8 BOM is accepted.

    \b
    Examples:
      lowtide convert csv-to-jsonl prompts.csv -o batch.jsonl --model qwen-plus
      lowtide convert csv-to-jsonl prompts.csv -o batch.jsonl --model qwen-plus \\
          --header --id-column id --text-column question \\
          --system "You are a helpful assistant." --param temperature=0.2
      lowtide convert csv-to-jsonl texts.csv --model text-embedding-v4 --url /v1/embeddings
    """
    try:
        template = RequestTemplate(model, url, system, parse_params(params))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    # Global to the csv module: set here, in the process that owns it, not in the library.
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_FIELD))
    with (
        _failures_as_click_errors(),
        _open_binary(src) as fin,
        _open_output(output, "utf-8", "\n") as fout,
    ):
        count = csv_to_jsonl(
            utf8_lines(fin, src),
            fout,
            template,
            id_column=id_column,
            text_column=text_column,
            header=header,
            source=src,
        )
    click.echo(f"wrote {count} request(s) to {_destination(output)}", err=True)


@convert_group.command("jsonl-to-csv")
@click.argument(
    "results",
    metavar="RESULTS.jsonl [ERRORS.jsonl ...]",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@_OUTPUT
@click.option("--excel", is_flag=True, help="Start with a UTF-8 BOM so spreadsheets read it right.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The batch input file: write rows in its custom_id order.",
)
def jsonl_to_csv_command(
    results: tuple[Path, ...], output: str, excel: bool, input_path: Path | None
) -> None:
    """Flatten batch output and error files into one CSV.

    Columns: custom_id, model, request_id, status_code, error_code, error_message, created,
    content, usage. content is the reply text, or the vector length for embeddings.

    \b
    Examples:
      lowtide convert jsonl-to-csv output.jsonl errors.jsonl -o results.csv
      lowtide convert jsonl-to-csv output.jsonl errors.jsonl --input batch.jsonl \\
          --excel -o results.csv
    """
    encoding = "utf-8-sig" if excel else "utf-8"
    with _failures_as_click_errors(), _open_output(output, encoding, "") as fout:
        summary = jsonl_to_csv(results, fout, input_path=input_path)
    click.echo(_summary_text(summary, output), err=True)


def _summary_text(summary: CsvSummary, output: str) -> str:
    text = f"wrote {summary.rows} row(s) to {_destination(output)}, {summary.failed} with errors"
    if summary.missing:
        text += f"; {summary.missing} input request(s) have no result"
    if summary.unknown:
        text += f"; {summary.unknown} result(s) not in the input, written last"
    return text


@contextlib.contextmanager
def _failures_as_click_errors() -> Iterator[None]:
    try:
        yield
    except ConvertError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # a column spec that does not fit the file
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from exc
