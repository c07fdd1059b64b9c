"""Streaming CSV <-> JSONL converters for batch files, and the ``lowtide convert`` commands.

``csv-to-jsonl`` writes the same lines as the script the hosted products hand out (column 0 is
the ``custom_id``, column 1 the user text, compact JSON with non-ASCII kept), with options for
headers, other endpoints and extra body parameters. ``jsonl-to-csv`` flattens output and error
files into one spreadsheet, reading both error shapes (``error.code`` as OpenAI and lowtide
write it, ``error.error_code`` as the Model Studio script reads it).

Both directions stream: memory stays flat whatever the file size, except for the set of ids
kept to catch duplicates and the optional ``--input`` ordering index. Every error names the
file and the 1-based row or line.

The converters themselves are in ``convert_requests`` (CSV -> JSONL) and ``convert_results``
(JSONL -> CSV); this module holds the commands and re-exports both.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final, TextIO

import click

from lowtide.cli.atomic import atomic_file
from lowtide.cli.convert_requests import (
    TEXT_KEYS,
    ConvertError,
    RequestTemplate,
    csv_requests,
    csv_to_jsonl,
    parse_params,
    utf8_lines,
    write_jsonl,
)
from lowtide.cli.convert_results import (
    RESULT_COLUMNS,
    CsvSummary,
    ResultRow,
    jsonl_to_csv,
    ordered_result_rows,
    result_row,
    result_rows,
)
from lowtide.cli.options import GROUP_SETTINGS

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


# A batch line may be up to 6 MB (docs/api-compatibility.md, "Validation codes"); the csv
# module's default field limit (128 KiB) would reject long prompts that the server accepts.
_MAX_FIELD: Final = 6 * 1024 * 1024


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


@click.group(name="convert", context_settings=GROUP_SETTINGS)
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
