"""What the batch commands use of lowtide's extensions (docs/extensions.md): the controls a
submit may set, the pace and pause the server reports, and the results of a batch so far.

Each reads the extension where the server has it and shows nothing more where it has not (an
OpenAI or Model Studio server), except the commands that exist only for it.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from lowtide.cli.atomic import atomic_file
from lowtide.cli.client_common import note, when
from lowtide.cli.progress import errors_path_for

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

__all__ = [
    "control_fields",
    "control_options",
    "download_partial",
    "paused_note",
    "result_paths",
    "server_pace",
    "write_results_so_far",
]

F = TypeVar("F", bound=Callable[..., Any])


def control_options(fn: F) -> F:
    """``--priority``, ``--max-cost`` and ``--max-error-rate``, passed as ``controls`` (the
    fields set, for ``extra_body``)."""

    @click.option(
        "--priority",
        type=int,
        help="Served before batches of lower priority (0 by default), unless their deadline "
        "is near (a lowtide extension).",
    )
    @click.option(
        "--max-cost",
        type=click.FloatRange(min=0, min_open=True),
        help="Stop the batch once its cost reaches this, in the model's currency (a lowtide "
        "extension).",
    )
    @click.option(
        "--max-error-rate",
        type=click.FloatRange(0, 1),
        help="Stop the batch once more than this share of its ended lines failed, judged from "
        "100 lines (a lowtide extension).",
    )
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        priority: int | None,
        max_cost: float | None,
        max_error_rate: float | None,
        **kwargs: Any,
    ) -> Any:
        given = {"priority": priority, "max_cost": max_cost, "max_error_rate": max_error_rate}
        controls = {k: v for k, v in given.items() if v is not None}
        return fn(*args, controls=controls, **kwargs)

    return cast(F, wrapper)


def server_pace(batch: Batch) -> tuple[float | None, float | None]:
    """(lines per second, seconds left) as the server reports them, where it does."""
    extra = batch.model_extra or {}
    per_minute, end = extra.get("lines_per_minute"), extra.get("estimated_completion_at")
    rate = per_minute / 60 if isinstance(per_minute, int | float) else None
    left = max(0.0, end - time.time()) if isinstance(end, int | float) else None
    return rate, left


def control_fields(batch: Batch) -> Iterator[tuple[str, str]]:
    """The batch controls' fields of ``batch get``, where the server sends them."""
    extra = batch.model_extra or {}
    if note := paused_note(batch):
        yield "paused", note.removeprefix("paused ")
    if extra.get("stop_reason"):
        yield "stopped", str(extra["stop_reason"])
    if extra.get("priority"):
        yield "priority", str(extra["priority"])
    for key in ("max_cost", "max_error_rate"):
        if extra.get(key) is not None:
            yield key.replace("_", " "), str(extra[key])
    if isinstance(extra.get("lines_per_minute"), int | float):
        pace = f"{extra['lines_per_minute']:g} lines a minute"
        end = extra.get("estimated_completion_at")
        yield "pace", pace + (f", ends about {when(end)}" if isinstance(end, int) else "")


def paused_note(batch: Batch) -> str | None:
    """ "paused since <time>" while the batch is paused (lowtide's ``paused_at``)."""
    paused = (batch.model_extra or {}).get("paused_at")
    return f"paused since {when(paused)}" if isinstance(paused, int) else None


def result_paths(batch_id: str, output: Path | None, errors: Path | None) -> tuple[Path, Path]:
    """Where a batch's output and error files go: as given, else beside ``output`` (the error
    file ``<name>.errors.jsonl``), else ``<batch id>_output.jsonl`` and ``_errors.jsonl``."""
    out_path = output or Path(f"{batch_id}_output.jsonl")
    err_path = errors or (errors_path_for(output) if output else Path(f"{batch_id}_errors.jsonl"))
    return out_path, err_path


def download_partial(
    client: openai.OpenAI, batch_id: str, output: Path | None, errors: Path | None
) -> None:
    """``batch download --partial``: the lines so far, in the two files."""
    out, err = result_paths(batch_id, output, errors)
    lines = write_results_so_far(client, batch_id, out, err)
    note(f"wrote {lines[0]} line(s) to {out} and {lines[1]} error line(s) to {err} so far")


def write_results_so_far(
    client: openai.OpenAI, batch_id: str, output: Path, errors: Path
) -> tuple[int, int]:
    """Write the output and error lines the batch has so far (``GET /batches/{id}/results``)
    to the two files, streamed; returns how many lines each got."""
    import httpx2
    import openai

    counts = []
    for kind, path in (("output", output), ("errors", errors)):
        lines = 0
        try:
            # The SDK's generic call, answered by the HTTP response itself, unread: streamed.
            response = client.get(
                f"/batches/{batch_id}/results",
                cast_to=httpx2.Response,
                options={"params": {"kind": kind}},
                stream=True,
            )
        except openai.NotFoundError as exc:
            if "Unknown request URL" in str(exc):
                raise click.ClickException(
                    "this server cannot give results so far (not a lowtide?); wait for the "
                    "batch to end, then download its files"
                ) from exc
            raise
        with atomic_file(path) as out, contextlib.closing(response):
            for chunk in response.iter_bytes():
                out.write(chunk)
                lines += chunk.count(b"\n")
        counts.append(lines)
    return counts[0], counts[1]
