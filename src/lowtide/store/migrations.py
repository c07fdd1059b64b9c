"""Schema versions for PostgreSQL: a fresh install gets ``schema.sql``, an existing database
the numbered migrations it has not had yet.

Both run inside one transaction holding an advisory lock, so several processes starting at
once against a new or old database do not race: the first applies what is missing, the others
wait and then find nothing to do. ``schema_migrations`` records what was applied.

Files: ``sql/postgres/schema.sql`` and ``sql/postgres/migrations/NNNN_name.sql``. A new
migration changes both (a test checks they give the same schema); a migration that needs
lowtide's own code has a Python step in ``AFTER``, run in the same transaction. SQLite keeps
its own approach: ``sql/sqlite.sql`` is applied with ``IF NOT EXISTS`` when the store opens,
and ``PRAGMA user_version`` tells which changes an older file still needs (store/sqlite.py).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lowtide import errors
from lowtide.domain.status import TERMINAL
from lowtide.store import rows

#: ``pg_advisory_xact_lock`` key: "lowtide" in ASCII, so that it is recognisable in pg_locks.
LOCK_KEY = 0x6C6F7774696465

BOOKKEEPING = """\
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
"""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _sql_dir() -> Any:
    return resources.files("lowtide.store").joinpath("sql")


def schema_sql(dialect: str = "postgres") -> str:
    """What a fresh database gets (without the bookkeeping table)."""
    if dialect == "sqlite":
        return str(_sql_dir().joinpath("sqlite.sql").read_text())
    if dialect == "postgres":
        return str(_sql_dir().joinpath("postgres/schema.sql").read_text())
    raise errors.ConfigError(f"unknown SQL dialect {dialect!r}: use postgres or sqlite")


def migrations() -> list[Migration]:
    """The PostgreSQL migrations, in version order."""
    found = []
    for entry in _sql_dir().joinpath("postgres/migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise errors.ConfigError(f"two migrations share a version number: {versions}")
    return found


def install_script() -> str:
    """The whole fresh install as one script, bookkeeping included (``lowtide db print``):
    a database set up from it is upgraded later by ``lowtide db upgrade`` like any other."""
    marks = ",\n    ".join(f"({m.version}, '{m.name}')" for m in migrations())
    return (
        f"BEGIN;\n\n{BOOKKEEPING}\n{schema_sql('postgres')}\n"
        f"INSERT INTO schema_migrations (version, name) VALUES\n    {marks};\n\nCOMMIT;\n"
    )


async def upgrade(conn: Any, *, fresh_schema: bool = True) -> list[int]:
    """Bring the database of ``conn`` (an asyncpg connection) to the latest version.

    An empty database gets ``schema.sql`` (unless ``fresh_schema`` is False: the drift test
    runs the migrations instead). Returns the versions applied now; [] if it was up to date.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(BOOKKEEPING)
        applied = {int(v) for v in await conn.fetchval(_APPLIED)}
        todo = [m for m in migrations() if m.version not in applied]
        if not todo:
            return []
        if not applied and fresh_schema:
            await conn.execute(schema_sql("postgres"))
        else:
            for migration in todo:
                await conn.execute(migration.sql)
                if migration.version in AFTER:
                    await AFTER[migration.version](conn)
        await conn.executemany(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            [(m.version, m.name) for m in todo],
        )
        return [m.version for m in todo]


async def _store_result_lines(conn: Any) -> None:
    """Migration 3: render the result lines of batches still running from the columns that
    schema 2 kept (the same renderer as new outcomes), then drop ``body``."""
    terminal = [s.value for s in TERMINAL]
    old = await conn.fetch(
        "SELECT r.batch_id, r.line, r.custom_id, r.state, r.status_code, r.request_id, r.body,"
        " r.error_code, r.error_message FROM requests r JOIN batches b ON b.id = r.batch_id"
        " WHERE r.state IN (2, 3) AND b.status <> ALL($1::text[])",
        terminal,
    )
    await conn.executemany(
        "UPDATE requests SET result = $1 WHERE batch_id = $2 AND line = $3",
        [(rows.legacy_result_line(r), r[0], r[1]) for r in old],
    )
    await conn.execute("ALTER TABLE requests DROP COLUMN body")


#: Python steps run right after the SQL migration of the same version, in its transaction:
#: for changes that need lowtide's own code (rendering result lines).
AFTER: dict[int, Callable[[Any], Awaitable[None]]] = {3: _store_result_lines}

_APPLIED = "SELECT COALESCE(array_agg(version), '{}') FROM schema_migrations"


async def upgrade_database(url: str) -> list[int]:
    """``lowtide db upgrade``: apply what is missing to the database at ``url``."""
    if url.startswith("sqlite:///"):
        from lowtide.store import open_store

        store = open_store(url)
        await store.open()  # the SQLite schema is applied when the store opens
        await store.close()
        return []
    from lowtide.store.postgres import load_asyncpg

    asyncpg = load_asyncpg()
    try:
        conn = await asyncpg.connect(url)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise errors.StorageError(f"cannot connect to the database: {exc}") from exc
    try:
        return await upgrade(conn)
    finally:
        await conn.close()
