"""``lowtide files``: upload, list, show, download and delete files on a server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from lowtide.cli.client_common import (
    download_file,
    json_option,
    new_table,
    print_json,
    stdout_console,
    when,
    with_client,
)
from lowtide.cli.options import GROUP_SETTINGS

if TYPE_CHECKING:
    import openai
    from openai.types import FileObject

__all__ = ["files_group"]


@click.group(name="files", context_settings=GROUP_SETTINGS)
def files_group() -> None:
    """Upload, list, show, download and delete files on a server.

    \b
    Example:
      lowtide files upload batch.jsonl
      lowtide files list --purpose batch
    """


def _file_fields(f: FileObject) -> Iterator[tuple[str, str]]:
    yield "id", f.id
    yield "filename", f.filename
    yield "purpose", f.purpose
    yield "bytes", str(f.bytes)
    yield "created", when(f.created_at)
    yield "expires", when(f.expires_at)
    yield "status", str(f.status or "")


@files_group.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default="batch", show_default=True, help="Purpose of the file.")
@json_option
@with_client
def upload_command(client: openai.OpenAI, file: Path, purpose: str, as_json: bool) -> None:
    """Upload a file; print its id.

    \b
    Example:
      lowtide files upload batch.jsonl
    """
    with file.open("rb") as handle:
        uploaded = client.files.create(file=(file.name, handle), purpose=cast(Any, purpose))
    if as_json:
        print_json(uploaded.to_dict(mode="json"))
    else:
        click.echo(uploaded.id)


@files_group.command("list")
@click.option("--purpose", help="Only files of this purpose (batch, batch_output, ...).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many."
)
@json_option
@with_client
def files_list_command(
    client: openai.OpenAI, purpose: str | None, limit: int, as_json: bool
) -> None:
    """List files, newest first.

    \b
    Examples:
      lowtide files list --purpose batch_output
      lowtide files list --json | jq -r '.[].id'
    """
    size = min(limit, 100)
    if purpose:
        page = client.files.list(limit=size, purpose=purpose)
    else:
        page = client.files.list(limit=size)
    found: list[FileObject] = []
    for f in page:  # the SDK fetches the next page as needed
        found.append(f)
        if len(found) >= limit:
            break
    if as_json:
        print_json([f.to_dict(mode="json") for f in found])
        return
    table = new_table("ID", "PURPOSE", "BYTES", "CREATED", "FILENAME")
    for f in found:
        table.add_row(f.id, f.purpose, str(f.bytes), when(f.created_at), f.filename)
    stdout_console().print(table)


@files_group.command("get")
@click.argument("file_id")
@json_option
@with_client
def files_get_command(client: openai.OpenAI, file_id: str, as_json: bool) -> None:
    """Show one file.

    \b
    Example:
      lowtide files get file-batch-0123 --json
    """
    f = client.files.retrieve(file_id)
    if as_json:
        print_json(f.to_dict(mode="json"))
        return
    for key, value in _file_fields(f):
        click.echo(f"{key + ':':<10}{value}")


@files_group.command("download")
@click.argument("file_id")
@click.option(
    "-o",
    "--output",
    default="-",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write it; '-' (the default) writes to stdout.",
)
@with_client
def files_download_command(client: openai.OpenAI, file_id: str, output: str) -> None:
    """Download a file's content.

    \b
    Examples:
      lowtide files download file-batch_output-0123 -o output.jsonl
      lowtide files download file-batch_output-0123 | head -n 3
    """
    if output != "-":
        download_file(client, file_id, Path(output))
        return
    with client.files.with_streaming_response.content(file_id) as response:
        for chunk in response.iter_bytes():
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


@files_group.command("delete")
@click.argument("file_id")
@json_option
@with_client
def files_delete_command(client: openai.OpenAI, file_id: str, as_json: bool) -> None:
    """Delete a file.

    \b
    Example:
      lowtide files delete file-batch-0123
    """
    deleted = client.files.delete(file_id)
    if as_json:
        print_json(deleted.to_dict(mode="json"))
    else:
        click.echo(f"deleted {deleted.id}")
