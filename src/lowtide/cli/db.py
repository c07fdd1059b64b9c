"""``lowtide db``: the database schema (print it, or bring a database up to date)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from lowtide import errors
from lowtide.cli.options import GROUP_SETTINGS, config_option, database_url_option
from lowtide.settings import load_settings
from lowtide.store import migrations


@click.group("db", context_settings=GROUP_SETTINGS)
def db_group() -> None:
    """The database schema: print it, or bring a database up to date.

    lowtide upgrades its database by itself when it starts (safely, even with many workers
    starting at once); these commands are for doing it on purpose, before a roll-out, or for
    a DBA who applies the SQL by hand.
    """


@db_group.command()
@config_option("; its [server] database_url is upgraded")
@database_url_option("Upgrade")
def upgrade(config_path: Path | None, database_url: str | None) -> None:
    """Apply the migrations the configured database has not had yet.

    \b
    Example:
        lowtide db upgrade --config fleet.toml
    """
    try:
        url = database_url or load_settings(config_path).server.resolved_database_url()
        applied = asyncio.run(migrations.upgrade_database(url))
    except errors.LowtideError as exc:
        raise click.ClickException(exc.message) from exc
    if url.startswith("sqlite:"):
        click.echo("SQLite: the schema is in place (it is applied whenever the store opens).")
    elif applied:
        click.echo(f"migrations applied: {', '.join(f'{v:04d}' for v in applied)}")
    else:
        click.echo("the database is up to date")


@db_group.command("print")
@click.option(
    "--dialect",
    type=click.Choice(["postgres", "sqlite"]),
    default="postgres",
    show_default=True,
    help="Which database's SQL.",
)
def print_schema(dialect: str) -> None:
    """Print the SQL of a fresh install, without connecting to anything.

    For PostgreSQL it includes the migration bookkeeping, so that a database set up from it
    is later upgraded like any other.

    \b
    Example:
        lowtide db print | psql "$DATABASE_URL"
    """
    sql = migrations.install_script(dialect)
    click.echo(sql, nl=not sql.endswith("\n"))
