"""CSV -> batch input JSONL, streaming: what ``lowtide convert csv-to-jsonl`` runs.

The default lines are those of the script the hosted products hand out (column 0 is the
``custom_id``, column 1 the user text, compact JSON with non-ASCII kept). Memory stays flat
whatever the file size, except for the set of ids kept to catch duplicates. Every error names
the file and the 1-based row or line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

__all__ = [
    "TEXT_KEYS",
    "ConvertError",
    "RequestTemplate",
    "csv_requests",
    "csv_to_jsonl",
    "parse_params",
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


class ConvertError(ValueError):
    """A row or line that cannot be converted. The message names the file and the position."""

    def __init__(self, message: str, *, source: str, unit: str, number: int) -> None:
        self.source = source
        self.number = number
        super().__init__(f"{source}: {unit} {number}: {message}")


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
