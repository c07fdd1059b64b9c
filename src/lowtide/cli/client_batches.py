"""``lowtide batch``: submit, wait for, download, show, cancel and list batches.

Commands that end with a batch in a terminal state exit with its code
(``lowtide.cli.progress.EXIT_CODES``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import click

from lowtide.cli.client_backends import describe, list_backends, waiting_note
from lowtide.cli.client_common import (
    download_file,
    json_option,
    new_table,
    note,
    print_json,
    stdout_console,
    when,
    with_client,
)
from lowtide.cli.extensions import (
    control_fields,
    control_options,
    download_partial,
    paused_note,
    result_paths,
    server_pace,
)
from lowtide.cli.options import GROUP_SETTINGS
from lowtide.cli.progress import (
    EXIT_INTERRUPTED,
    TERMINAL,
    BatchProgress,
    Counts,
    exit_code,
)

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

__all__ = ["batch_group", "endpoint_of", "parse_since"]

DEFAULT_ENDPOINT: Final = "/v1/chat/completions"
#: How long a wait rides out a server that cannot be reached (a restart, an upgrade).
_PATIENCE_SECONDS: Final = 300.0
_SINCE_RE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


_POLL = click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between two looks at the batch.",
)


def _counts(batch: Batch) -> Counts:
    rc = batch.request_counts
    note = waiting_note(batch) or paused_note(batch)
    if rc is None:
        return Counts(batch.status, note=note)
    rate, left = server_pace(batch)
    return Counts(batch.status, rc.completed, rc.failed, rc.total, note, rate, left)


def _name(batch: Batch) -> str:
    return (batch.metadata or {}).get("ds_name", "")


def endpoint_of(path: Path) -> str:
    """The ``url`` of the file's first line: what ``--endpoint`` defaults to."""
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    url = None
                return url if isinstance(url, str) else DEFAULT_ENDPOINT
    return DEFAULT_ENDPOINT


def _check_window(window: str) -> None:
    """The window as lowtide and Model Studio accept it (24h to 336h, 1d to 14d); OpenAI's
    only window, 24h, is one of them."""
    from lowtide import errors
    from lowtide.service.batches import parse_completion_window

    try:
        parse_completion_window(window)
    except errors.LowtideError as exc:
        raise click.BadParameter(exc.message, param_hint="--window") from exc


def _forget_upload(client: openai.OpenAI, file_id: str) -> None:
    """The batch was refused: delete its input file rather than leave it in the account."""
    try:
        client.files.delete(file_id)
    except Exception:  # the create's error is the one to report
        note(f"could not delete the uploaded file {file_id}; delete it with lowtide files delete")
    else:
        note(f"the batch was refused; its uploaded file {file_id} was deleted")


def _wait(client: openai.OpenAI, batch_id: str, poll_interval: float) -> Batch:
    batch = client.batches.retrieve(batch_id)  # a wrong URL, key or id fails here, at once
    with BatchProgress(batch_id) as progress:
        while True:
            progress.update(_counts(batch))
            if batch.status in TERMINAL:
                return batch
            time.sleep(poll_interval)
            batch = _look(client, batch_id, poll_interval)


def _look(client: openai.OpenAI, batch_id: str, poll_interval: float) -> Batch:
    """Retrieve the batch, riding out a server that is briefly gone (a restart mid-wait)."""
    import openai

    failing_since = time.monotonic()
    while True:
        try:
            return client.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.InternalServerError):
            # The SDK has retried already; a batch may run for a day, so keep looking a while.
            if time.monotonic() - failing_since > _PATIENCE_SECONDS:
                raise
            time.sleep(max(poll_interval, 1.0))


def _wait_or_hint(
    client: openai.OpenAI, batch_id: str, poll_interval: float, resume: str
) -> Batch | None:
    """Wait for the batch; on Ctrl-C say that it keeps running and how to resume, and give None."""
    try:
        return _wait(client, batch_id, poll_interval)
    except KeyboardInterrupt:
        note(f"\nstopped waiting; {batch_id} keeps running. Resume waiting with:\n  {resume}")
        return None


def _download_results(
    client: openai.OpenAI, batch: Batch, output: Path | None, errors: Path | None
) -> None:
    # Both files are always written, the error file empty when no line failed, so that the
    # next step of a script (e.g. `lowtide convert jsonl-to-csv OUT ERR`) finds them.
    out_path, err_path = result_paths(batch.id, output, errors)
    out_lines = download_file(client, batch.output_file_id, out_path)
    err_lines = download_file(client, batch.error_file_id, err_path)
    note(f"wrote {out_lines} line(s) to {out_path} and {err_lines} error line(s) to {err_path}")


def _finish(batch: Batch, as_json: bool) -> int:
    """The end of a command that waited: validation errors, ``--json``, the exit code."""
    if as_json:
        print_json(batch.to_dict(mode="json"))
    for error in (batch.errors.data or []) if batch.errors else []:
        line = f"line {error.line}: " if error.line else ""
        note(f"  {line}{error.code}: {error.message}")
    return exit_code(batch.status)


@click.group(name="batch", context_settings=GROUP_SETTINGS)
def batch_group() -> None:
    """Submit, watch, list, cancel and download batches on a server.

    Works with a lowtide server and with any OpenAI-compatible Batch API. Commands that wait
    for a batch exit with 0 when it completed, 3 failed, 4 expired, 5 cancelled, 1 on an
    error and 130 when Ctrl-C stopped the waiting (the batch goes on).

    \b
    Example:
      export LOWTIDE_BASE_URL=http://127.0.0.1:8000 LOWTIDE_API_KEY=sk-local-dev
      lowtide batch submit batch.jsonl --wait -o output.jsonl --errors errors.jsonl
    """


_OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the output file (default <batch id>_output.jsonl).",
)
_ERRORS = click.option(
    "--errors",
    "errors_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the error file (default: beside --output as <name>.errors.jsonl; "
    "without --output, <batch id>_errors.jsonl).",
)


@batch_group.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    help="Endpoint of the batch, e.g. /v1/chat/completions, /v1/embeddings, /v1/responses "
    "(default: the url of the file's first line).",
)
@click.option(
    "--window", default="24h", show_default=True, help="Completion window, 24h to 336h (or 14d)."
)
@click.option("--name", help="A name for the batch (metadata ds_name; `batch list --name`).")
@click.option("--description", help="A description (metadata ds_description).")
@click.option("--wait", is_flag=True, help="Show progress until the batch ends, then download.")
@_OUTPUT
@_ERRORS
@_POLL
@json_option
@control_options
@with_client
def submit_command(
    client: openai.OpenAI,
    file: Path,
    endpoint: str | None,
    window: str,
    name: str | None,
    description: str | None,
    wait: bool,
    output: Path | None,
    errors_path: Path | None,
    poll_interval: float,
    as_json: bool,
    controls: dict[str, Any],
) -> int | None:
    """Upload FILE and create a batch of it; print the batch id.

    With --wait, show a progress bar until the batch is completed, failed, expired or
    cancelled, then write the output and error files. Ctrl-C stops the waiting, not the batch.

    \b
    Examples:
      lowtide batch submit batch.jsonl --name nightly
      lowtide batch submit batch.jsonl --wait -o output.jsonl --errors errors.jsonl
    """
    _check_window(window)  # before the upload: a refused batch would leave its file behind
    with file.open("rb") as handle:
        uploaded = client.files.create(file=(file.name, handle), purpose="batch")
    metadata = {k: v for k, v in (("ds_name", name), ("ds_description", description)) if v}
    try:
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=cast(Any, endpoint or endpoint_of(file)),
            completion_window=cast(Any, window),
            metadata=metadata or None,
            extra_body=controls or None,
        )
    except Exception:
        _forget_upload(client, uploaded.id)
        raise
    if as_json and not wait:
        print_json(batch.to_dict(mode="json"))
    elif not as_json:
        click.echo(batch.id)  # on stdout at once, for ID=$(lowtide batch submit ...)
    if not wait:
        note(f"follow it with: lowtide batch wait {batch.id}")
        return None
    files = (("-o", output), ("--errors", errors_path))
    resume = f"lowtide batch wait {batch.id} && lowtide batch download {batch.id}"
    resume += "".join(f" {flag} {path}" for flag, path in files if path)
    done = _wait_or_hint(client, batch.id, poll_interval, resume)
    if done is None:
        return EXIT_INTERRUPTED
    if done.status != "failed":  # a file that failed validation has no results
        _download_results(client, done, output, errors_path)
    return _finish(done, as_json)


@batch_group.command("wait")
@click.argument("batch_id")
@_POLL
@json_option
@with_client
def wait_command(
    client: openai.OpenAI, batch_id: str, poll_interval: float, as_json: bool
) -> int | None:
    """Show a batch's progress until it ends; exit with its status code.

    \b
    Example:
      lowtide batch wait batch_0123 && lowtide batch download batch_0123 -o output.jsonl
    """
    batch = _wait_or_hint(client, batch_id, poll_interval, f"lowtide batch wait {batch_id}")
    return EXIT_INTERRUPTED if batch is None else _finish(batch, as_json)


@batch_group.command("download")
@click.argument("batch_id")
@_OUTPUT
@_ERRORS
@click.option(
    "--partial",
    is_flag=True,
    help="Write the lines the batch has so far, while it runs (a lowtide extension).",
)
@with_client
def download_command(
    client: openai.OpenAI,
    batch_id: str,
    output: Path | None,
    errors_path: Path | None,
    partial: bool,
) -> int | None:
    """Write the output and error files of a finished batch; exit with its status code.

    Both files are written, the error file empty when no line failed. With --partial, the
    lines so far of a batch that may still run, in line order.

    \b
    Examples:
      lowtide batch download batch_0123 -o output.jsonl --errors errors.jsonl
      lowtide batch download batch_0123 --partial -o so_far.jsonl
    """
    batch = client.batches.retrieve(batch_id)
    if partial:
        download_partial(client, batch.id, output, errors_path)
        return None
    if batch.status not in TERMINAL:
        raise click.ClickException(
            f"{batch_id} is {batch.status}; wait for it first: lowtide batch wait {batch_id}"
        )
    if batch.status == "failed":  # a file that failed validation has no results
        return _finish(batch, as_json=False)
    _download_results(client, batch, output, errors_path)
    return exit_code(batch.status)


@batch_group.command("get")
@click.argument("batch_id")
@json_option
@with_client
def get_command(client: openai.OpenAI, batch_id: str, as_json: bool) -> None:
    """Show one batch.

    \b
    Examples:
      lowtide batch get batch_0123
      lowtide batch get batch_0123 --json | jq .request_counts
    """
    batch = client.batches.retrieve(batch_id)
    if as_json:
        print_json(batch.to_dict(mode="json"))
        return
    for key, value in _batch_fields(batch):
        click.echo(f"{key + ':':<16}{value}")
    for backend in _serving(client, batch):
        click.echo(f"{'backend:':<16}{describe(backend)}")
    for error in (batch.errors.data or []) if batch.errors else []:
        click.echo(f"{'error:':<16}line {error.line or '-'}: {error.code}: {error.message}")


def _serving(client: openai.OpenAI, batch: Batch) -> list[dict[str, Any]]:
    """The backends that serve the batch's model, where the server says (a lowtide)."""
    model = getattr(batch, "model", None)
    if not model or batch.status in TERMINAL:
        return []
    return [b for b in list_backends(client) or [] if model in (b.get("models") or [])]


def _batch_fields(batch: Batch) -> Iterator[tuple[str, str]]:
    counts = _counts(batch)
    yield "id", batch.id
    yield "status", batch.status
    if waiting := waiting_note(batch):
        yield "waiting", waiting.removeprefix("waiting for ")
    yield from control_fields(batch)
    yield "name", _name(batch)
    yield "endpoint", batch.endpoint
    yield "model", str(getattr(batch, "model", None) or "")
    yield "created", when(batch.created_at)
    yield "expires", when(batch.expires_at)
    yield "requests", f"{counts.completed} done, {counts.failed} failed, {counts.total} total"
    yield "input_file_id", batch.input_file_id
    yield "output_file_id", batch.output_file_id or ""
    yield "error_file_id", batch.error_file_id or ""
    if batch.usage is not None:
        usage = batch.usage
        yield "usage", f"{usage.input_tokens} input, {usage.output_tokens} output tokens"
    cost = (batch.model_extra or {}).get("cost")
    if isinstance(cost, dict) and isinstance(cost.get("amount"), int | float):
        # Decimal: a plain number such as 0.0000328, never 3.28e-05.
        amount = format(Decimal(str(cost["amount"])), "f")
        yield "cost", f"{amount} {cost.get('currency', '')}".strip()


@batch_group.command("cancel")
@click.argument("batch_id")
@json_option
@with_client
def cancel_command(client: openai.OpenAI, batch_id: str, as_json: bool) -> None:
    """Cancel a batch. Lines already run keep their results.

    \b
    Example:
      lowtide batch cancel batch_0123 && lowtide batch wait batch_0123
    """
    batch = client.batches.cancel(batch_id)
    if as_json:
        print_json(batch.to_dict(mode="json"))
    else:
        click.echo(f"{batch.id} {batch.status}")


@batch_group.command("list")
@click.option(
    "--status",
    help="Only these statuses, comma-separated (e.g. in_progress,finalizing).",
)
@click.option("--name", help="Only batches whose name contains this (case-insensitive).")
@click.option(
    "--since",
    help="Only batches created since: a duration (30m, 12h, 7d) or a date (2025-06-30[T12:00]).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many."
)
@json_option
@with_client
def list_command(
    client: openai.OpenAI,
    status: str | None,
    name: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List batches, newest first.

    \b
    Examples:
      lowtide batch list
      lowtide batch list --status in_progress,validating --name nightly --since 2d
      lowtide batch list --json | jq -r '.[].id'
    """
    try:
        after = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    statuses = {s.strip() for s in (status or "").split(",") if s.strip()}
    batches = list(_matching(_all_batches(client, statuses, name), statuses, name, after, limit))
    if as_json:
        print_json([b.to_dict(mode="json") for b in batches])
        return
    table = new_table("ID", "STATUS", "CREATED", "DONE", "FAILED", "TOTAL", "NAME", "ENDPOINT")
    for b in batches:
        c = _counts(b)
        row = (b.id, b.status, when(b.created_at), c.completed, c.failed, c.total, _name(b))
        table.add_row(*map(str, row), b.endpoint)
    stdout_console().print(table)


def _all_batches(client: openai.OpenAI, statuses: set[str], name: str | None) -> Iterable[Batch]:
    # lowtide and Model Studio filter on the server; other APIs ignore these and
    # ``_matching`` filters on this side, so the result is the same everywhere.
    query = {"status": ",".join(sorted(statuses)), "ds_name": name or ""}
    return client.batches.list(limit=100, extra_query={k: v for k, v in query.items() if v})


def _matching(
    batches: Iterable[Batch],
    statuses: set[str],
    name: str | None,
    after: int | None,
    limit: int,
) -> Iterator[Batch]:
    shown = 0
    for batch in batches:  # the SDK fetches the next page as needed
        if after is not None and batch.created_at < after:
            return  # newest first: everything from here on is older
        if statuses and batch.status not in statuses:
            continue
        if name and name.lower() not in _name(batch).lower():
            continue
        yield batch
        shown += 1
        if shown >= limit:
            return


def parse_since(text: str, now: float | None = None) -> int:
    """``30m``, ``12h``, ``7d``, ``2w`` ago, or an ISO date/time (local time), as epoch seconds."""
    match = _SINCE_RE.match(text.strip())
    if match:
        ago = int(match[1]) * _UNIT_SECONDS[match[2]]
        return int((time.time() if now is None else now) - ago)
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 12h, 7d) nor a date (2025-06-30T12:00)"
        ) from None
