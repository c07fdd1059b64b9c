"""``lowtide keys``: API keys kept in the database, made, listed and revoked.

The commands open the configured database directly (like ``lowtide db``), so they work with
the server running or not; every API process sees a change at its next request. A key's
secret is printed once, by ``create``, on stdout alone (so ``KEY=$(lowtide keys create ...)``
captures it); nothing else ever prints or logs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lowtide import errors
from lowtide.cli.options import GROUP_SETTINGS, config_option, database_url_option
from lowtide.domain.accounts import ApiKeyRecord
from lowtide.service.keys import KeyService
from lowtide.settings import load_settings
from lowtide.store import open_store

T = TypeVar("T")

_CONFIG = config_option("; its [server] database_url holds the keys")
_DATABASE = database_url_option("Use")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group("keys", context_settings=GROUP_SETTINGS)
def keys_group() -> None:
    """API keys kept in the database: create, list, revoke.

    Keys made here work next to the config file's [[api_keys]]. The database keeps only a
    SHA-256 digest of each key; the key itself is printed once, when it is made. A revoked
    key is refused at once by every API process sharing the database.
    """


_CREATE_DATABASE = click.option(
    "--create-database",
    is_flag=True,
    help="Make a new SQLite database if there is none yet (else that is an error: a key in a "
    "database no server reads would be lost).",
)


def _database(config_path: Path | None, database_url: str | None, *, create: bool) -> str:
    """The database to use: ``--database-url``, else the config's (``--config``,
    ``$LOWTIDE_CONFIG``, else the defaults, as ``lowtide serve`` reads it). A SQLite file that
    does not exist is not made unless asked: run from the wrong directory, the command would
    otherwise put the key in a new database that no server reads."""
    try:
        url = database_url or load_settings(config_path).server.resolved_database_url()
    except errors.ConfigError as exc:
        raise click.ClickException(exc.message) from exc
    if url.startswith("sqlite:///") and not create:
        path = Path(url.removeprefix("sqlite:///"))  # the form open_store reads
        if not path.exists():
            source = "--database-url" if database_url else _config_source(config_path)
            raise click.ClickException(
                f"there is no database at {path} (from {source}). Point at the server's with "
                "--config FILE (or LOWTIDE_CONFIG) or --database-url, or add --create-database "
                "to make a new one there."
            )
    return url


def _config_source(config_path: Path | None) -> str:
    if config_path is not None:
        return str(config_path)
    return "the default data_dir ./lowtide-data: no --config and no LOWTIDE_CONFIG"


def _run(url: str, work: Callable[[KeyService], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_store(url)
        await store.open()
        try:
            return await work(KeyService(store))
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except errors.LowtideError as exc:
        raise click.ClickException(exc.message) from exc


def _as_dict(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "account": record.account,
        "label": record.label,
        "hint": record.hint,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


def _when(timestamp: int | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


@keys_group.command()
@click.option("--account", required=True, help="The account the key acts for.")
@click.option("--label", help="A note saying what the key is for (shown by `keys list`).")
@_CONFIG
@_DATABASE
@_CREATE_DATABASE
@_JSON
def create(
    account: str,
    label: str | None,
    config_path: Path | None,
    database_url: str | None,
    create_database: bool,
    as_json: bool,
) -> None:
    """Make a new key for an account and print it, once.

    The key is printed on stdout and never shown again: store it now. Its id (key_...) names
    it in `keys list` and `keys revoke`.

    \b
    Example:
        KEY=$(lowtide keys create --account alice --label "nightly jobs" --config lowtide.toml)
    """
    url = _database(config_path, database_url, create=create_database)
    secret, record = _run(url, lambda s: s.create(account, label))
    if as_json:
        click.echo(json.dumps({**_as_dict(record), "key": secret}, indent=2))
        return
    click.echo(secret)
    click.echo(
        f"{record.id} made for account {record.account!r} in {_shown(url)}: the key above is "
        "shown only now.",
        err=True,
    )


def _shown(url: str) -> str:
    """The database, for a message: a SQLite path as is, a PostgreSQL URL without password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"


@keys_group.command("list")
@click.option("--account", help="Only this account's keys.")
@_CONFIG
@_DATABASE
@_JSON
def list_keys(
    account: str | None, config_path: Path | None, database_url: str | None, as_json: bool
) -> None:
    """List keys (id, account, label, first characters, when made and revoked).

    Secrets are never shown: the database does not have them.

    \b
    Example:
        lowtide keys list --account alice --config lowtide.toml
    """
    url = _database(config_path, database_url, create=False)
    records = _run(url, lambda s: s.list(account))
    if as_json:
        click.echo(json.dumps([_as_dict(r) for r in records], indent=2))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "ACCOUNT", "LABEL", "KEY", "CREATED (UTC)", "REVOKED (UTC)"):
        table.add_column(column, no_wrap=True, overflow="ignore")
    for r in records:
        cells = (r.id, r.account, r.label or "-", r.hint, _when(r.created_at), _when(r.revoked_at))
        table.add_row(*(Text(cell) for cell in cells))  # Text: cells are data, not markup
    # Wide when piped, so that ids are never cut.
    console = Console(highlight=False)
    (console if console.is_terminal else Console(highlight=False, width=200)).print(table)


@keys_group.command()
@click.argument("key_id")
@_CONFIG
@_DATABASE
def revoke(key_id: str, config_path: Path | None, database_url: str | None) -> None:
    """Revoke a key by its id: every API process refuses it from its next request on.

    \b
    Example:
        lowtide keys revoke key_0123456789abcdef --config lowtide.toml
    """
    url = _database(config_path, database_url, create=False)
    record = _run(url, lambda s: s.revoke(key_id))
    click.echo(f"{record.id} of account {record.account!r} revoked at {_when(record.revoked_at)}")
