"""``lowtide batch pause / resume / retry / estimate``: lowtide's batch controls
(docs/extensions.md). A server without them (OpenAI, Model Studio) answers 404: the command
says so."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lowtide.cli.client_batches import batch_group, endpoint_of
from lowtide.cli.client_common import json_option, note, print_json, with_client
from lowtide.cli.extensions import control_options

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

__all__ = ["estimate_command", "pause_command", "resume_command", "retry_command"]


def _post(client: openai.OpenAI, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST one of lowtide's extension routes, with the SDK's generic call."""
    import openai
    from openai.types import Batch

    cast_to: Any = object if path == "/batches/estimate" else Batch
    try:
        return client.post(path, cast_to=cast_to, body=body)
    except openai.NotFoundError as exc:
        if "Unknown request URL" in str(exc):
            raise click.ClickException(
                f"this server has no {path.rsplit('/', 1)[-1]} (not a lowtide?)"
            ) from exc
        raise


def _show(batch: Batch, as_json: bool, what: str) -> None:
    if as_json:
        print_json(batch.to_dict(mode="json"))
    else:
        click.echo(f"{batch.id} {what}")


@batch_group.command("pause")
@click.argument("batch_id")
@json_option
@with_client
def pause_command(client: openai.OpenAI, batch_id: str, as_json: bool) -> None:
    """Pause a batch in progress: nothing new is sent, requests in flight finish.

    Its completion window keeps running: a batch paused past its window expires. A lowtide
    extension.

    \b
    Example:
      lowtide batch pause batch_0123 && lowtide batch resume batch_0123
    """
    batch = _post(client, f"/batches/{batch_id}/pause")
    _show(batch, as_json, "paused")


@batch_group.command("resume")
@click.argument("batch_id")
@json_option
@with_client
def resume_command(client: openai.OpenAI, batch_id: str, as_json: bool) -> None:
    """Resume a paused batch. A lowtide extension.

    \b
    Example:
      lowtide batch resume batch_0123
    """
    batch = _post(client, f"/batches/{batch_id}/resume")
    _show(batch, as_json, "resumed")


@batch_group.command("retry")
@click.argument("batch_id")
@click.option(
    "--code",
    "codes",
    multiple=True,
    metavar="CODE",
    help="Retry only the lines whose error has this code (repeat for several), e.g. "
    "upstream_timeout, batch_expired, rate_limit_exceeded.",
)
@control_options
@json_option
@with_client
def retry_command(
    client: openai.OpenAI,
    batch_id: str,
    codes: tuple[str, ...],
    controls: dict[str, Any],
    as_json: bool,
) -> None:
    """Make a new batch of the lines of a finished batch that ended in error; print its id.

    The new batch reads the original lines from the batch's input file, with the same
    endpoint, window and controls (unless given here), and metadata retry_of naming the
    batch. A lowtide extension.

    \b
    Examples:
      lowtide batch retry batch_0123
      lowtide batch retry batch_0123 --code upstream_timeout --code batch_expired
    """
    body = {**controls, **({"codes": list(codes)} if codes else {})}
    batch = _post(client, f"/batches/{batch_id}/retry", body or None)
    if as_json:
        print_json(batch.to_dict(mode="json"))
        return
    click.echo(batch.id)
    note(f"follow it with: lowtide batch wait {batch.id}")


@batch_group.command("estimate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--endpoint",
    help="Endpoint of the batch (default: the url of the file's first line).",
)
@click.option("--keep", is_flag=True, help="Keep the uploaded file (print its id) afterwards.")
@json_option
@with_client
def estimate_command(
    client: openai.OpenAI, file: Path, endpoint: str | None, keep: bool, as_json: bool
) -> int | None:
    """Estimate a batch of FILE before running it: lines, tokens, cost range, duration.

    The file is uploaded, checked as a batch's would be (nothing runs), and deleted again
    unless --keep. Exits with 3 when a batch of it would fail validation. A lowtide extension.

    \b
    Example:
      lowtide batch estimate batch.jsonl
    """
    with file.open("rb") as handle:
        uploaded = client.files.create(file=(file.name, handle), purpose="batch")
    try:
        body = {"input_file_id": uploaded.id, "endpoint": endpoint or endpoint_of(file)}
        found = _post(client, "/batches/estimate", body)
    finally:
        if not keep:
            client.files.delete(uploaded.id)
    if as_json:
        print_json(found)
    else:
        for key, value in _estimate_fields(found):
            click.echo(f"{key + ':':<18}{value}")
    if keep:
        note(f"the uploaded file is kept: {uploaded.id}")
    return 3 if found.get("errors") else None


def _estimate_fields(found: dict[str, Any]) -> list[tuple[str, str]]:
    errors = (found.get("errors") or {}).get("data") or []
    fields = [("model", str(found.get("model") or "")), ("lines", f"{found.get('lines', 0):,}")]
    for error in errors:
        line = f"line {error['line']}: " if error.get("line") else ""
        fields.append(("error", f"{line}{error['code']}: {error['message']}"))
    if errors:
        return fields
    method = {
        "tokenize": "counted by the backend's tokenizer",
        "tokenize_sample": f"a sample of {found.get('tokenized_lines')} line(s) counted by the "
        "backend's tokenizer, the rest scaled",
        "characters": "estimated from characters",
        "test_model": "the test model's fixed usage",
    }.get(str(found.get("input_tokens_method")), "")
    fields.append(("input tokens", f"{found.get('input_tokens') or 0:,} ({method})"))
    ceiling = found.get("output_tokens_max")
    fields.append(
        ("output tokens", f"at most {ceiling:,}" if ceiling is not None else "no ceiling")
    )
    cost = found.get("cost") or {}
    high = cost.get("max")
    costs = f"{cost.get('min')} to {high}" if high is not None else f"from {cost.get('min')}"
    fields.append(("cost", f"{costs} {cost.get('currency', '')}".strip()))
    seconds = found.get("expected_seconds")
    if seconds is not None:
        pace = found.get("lines_per_minute")
        fields.append(("duration", f"about {_duration(seconds)} at {pace} lines a minute"))
    if found.get("note"):
        fields.append(("note", str(found["note"])))
    return fields


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
