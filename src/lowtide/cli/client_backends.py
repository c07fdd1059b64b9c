"""``lowtide backends``, and what the batch commands show of a backend a batch waits for.

Both read lowtide's own extensions (``GET /v1/backends``, a batch's ``waiting_for``); a server
without them (OpenAI, Model Studio) shows nothing more than before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from lowtide.cli.client_common import (
    json_option,
    new_table,
    print_json,
    stdout_console,
    when,
    with_client,
)

if TYPE_CHECKING:
    import openai
    from openai.types import Batch

__all__ = ["backends_command", "list_backends", "waiting_note"]


def list_backends(client: openai.OpenAI) -> list[dict[str, Any]] | None:
    """The server's backends (``GET /v1/backends``), or None where it has no such route."""
    import openai

    try:
        answer = client.get("/backends", cast_to=object)
    except openai.NotFoundError:
        return None
    data = answer.get("data") if isinstance(answer, dict) else None
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else None


def waiting_note(batch: Batch) -> str | None:
    """ "waiting for backend X: <cause>, since <time>" while every backend of the batch's model
    is down (lowtide's ``waiting_for``); None otherwise."""
    waiting = (batch.model_extra or {}).get("waiting_for")
    if not isinstance(waiting, dict) or not waiting.get("backend"):
        return None
    cause = waiting.get("error") or "no answer"
    since = waiting.get("since")
    return f"waiting for backend {waiting['backend']}: {cause}, since {when(since)}"


def describe(backend: dict[str, Any]) -> str:
    """One backend in a line: state, limit and in flight, and why it is down."""
    text = f"{backend.get('name')} {backend.get('state')}"
    text += f", limit {backend.get('concurrency_limit')} ({backend.get('in_flight')} in flight)"
    if backend.get("state") == "down":
        text += f": {backend.get('error') or 'no answer'}, since {when(backend.get('since'))}"
    return text


@click.command("backends")
@json_option
@with_client
def backends_command(client: openai.OpenAI, as_json: bool) -> None:
    """List the server's backends: up or down, since when, why, and their current limits.

    The limit is how many requests the server's engines may have in flight to the backend
    now (its share of max_concurrency, or what adaptive concurrency found). `unknown` means
    no engine reported on it lately (an API-only server with no worker running).

    \b
    Example:
      lowtide backends
    """
    found = list_backends(client)
    if found is None:
        raise click.ClickException("this server does not list its backends (not a lowtide?)")
    if as_json:
        print_json(found)
        return
    table = new_table("NAME", "STATE", "SINCE", "LIMIT", "IN FLIGHT", "MODELS", "LAST ERROR")
    for b in found:
        cells = (
            str(b.get("name")),
            str(b.get("state")),
            when(b.get("since")),
            str(b.get("concurrency_limit")),
            str(b.get("in_flight")),
            ", ".join(map(str, b.get("models") or [])),
            str(b.get("error") or ""),
        )
        table.add_row(*(Text(cell) for cell in cells))  # Text: cells are data, not markup
    stdout_console().print(table)
