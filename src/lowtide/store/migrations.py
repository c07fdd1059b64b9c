"""Schema versions, the same way for both dialects: a fresh database gets ``schema.sql``, an
existing one the numbered migrations it has not had yet.

Files: ``sql/<dialect>/schema.sql`` and ``sql/<dialect>/migrations/NNNN_name.sql``. Both
dialects have the same versions (a version SQLite needs and PostgreSQL does not is a no-op
there), so version N means the same schema in both. A new migration changes the dialect's
``schema.sql`` too (a test checks they give the same schema); a migration that needs lowtide's
own code has a Python step in ``AFTER_POSTGRES`` / ``AFTER_SQLITE``, run in its transaction.
Request states and statuses are written by name in these files, as in the queries.

What is applied is recorded in ``schema_migrations`` (PostgreSQL) or ``PRAGMA user_version``
(SQLite: the last version applied). On PostgreSQL the upgrade runs in one transaction holding
an advisory lock, so several processes starting at once do not race: the first applies what
is missing, the others wait and then find nothing to do. On SQLite it runs in one
``BEGIN IMMEDIATE`` transaction (one process owns the file).

Every upgrade ends by making the ``batch_moves`` table equal to the state machine's moves
(``lowtide.domain.status.MOVES``): the database refuses any other change of a batch's status.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lowtide import errors
from lowtide.domain.status import MOVES
from lowtide.store import queries, rows
from lowtide.store.queries import Dialect

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
_APPLIED = "SELECT COALESCE(array_agg(version), '{}') FROM schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _dialect(dialect: str) -> Dialect:
    for known in queries.DIALECTS:
        if dialect == known:
            return known
    raise errors.ConfigError(f"unknown SQL dialect {dialect!r}: use postgres or sqlite")


def _sql_dir(dialect: Dialect) -> Any:
    return resources.files("lowtide.store").joinpath("sql", dialect)


def schema_sql(dialect: str = "postgres") -> str:
    """What a fresh database gets (without the bookkeeping)."""
    text = _sql_dir(_dialect(dialect)).joinpath("schema.sql").read_text(encoding="utf-8")
    return queries.substitute(str(text))


@functools.cache
def migrations(dialect: str = "postgres") -> list[Migration]:
    """The migrations of a dialect, in version order."""
    found = []
    for entry in _sql_dir(_dialect(dialect)).joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            sql = queries.substitute(entry.read_text(encoding="utf-8"))
            found.append(Migration(int(match[1]), match[2], sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise errors.ConfigError(f"two migrations share a version number: {versions}")
    return found


def latest(dialect: str = "postgres") -> int:
    """The version a database of ``dialect`` is at once it is up to date."""
    return migrations(dialect)[-1].version


def moves() -> list[tuple[str, str]]:
    """The rows of ``batch_moves``, sorted as the ``batch_moves`` statement reads them."""
    return sorted((src.value, dst.value) for src, dsts in MOVES.items() for dst in dsts)


def install_script(dialect: str = "postgres") -> str:
    """The whole fresh install as one script, bookkeeping included (``lowtide db print``):
    a database set up from it is upgraded later by lowtide like any other."""
    values = ",\n    ".join(f"('{src}', '{dst}')" for src, dst in moves())
    fill_moves = f"INSERT INTO batch_moves (src, dst) VALUES\n    {values};\n"
    if _dialect(dialect) == "sqlite":
        return (
            f"BEGIN;\n\n{schema_sql('sqlite')}\n{fill_moves}\n"
            f"PRAGMA user_version = {latest('sqlite')};\n\nCOMMIT;\n"
        )
    marks = ",\n    ".join(f"({m.version}, '{m.name}')" for m in migrations())
    return (
        f"BEGIN;\n\n{BOOKKEEPING}\n{schema_sql('postgres')}\n{fill_moves}\n"
        f"INSERT INTO schema_migrations (version, name) VALUES\n    {marks};\n\nCOMMIT;\n"
    )


# --- PostgreSQL ------------------------------------------------------------------------------


async def upgrade(conn: Any, *, fresh_schema: bool = True) -> list[int]:
    """Bring the PostgreSQL database of ``conn`` (an asyncpg connection) to the latest version.

    An empty database gets ``schema.sql`` (unless ``fresh_schema`` is False: the drift test
    runs the migrations instead). Returns the versions applied now; [] if it was up to date.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(BOOKKEEPING)
        applied = {int(v) for v in await conn.fetchval(_APPLIED)}
        todo = [m for m in migrations() if m.version not in applied]
        if todo and not applied and fresh_schema:
            await conn.execute(schema_sql("postgres"))
        elif todo:
            for migration in todo:
                await conn.execute(migration.sql)
                if migration.version in AFTER_POSTGRES:
                    await AFTER_POSTGRES[migration.version](conn)
        await conn.executemany(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            [(m.version, m.name) for m in todo],
        )
        q = queries.load("postgres")
        if [tuple(r) for r in await conn.fetch(q["batch_moves"])] != moves():
            await conn.execute(q["forget_batch_moves"])
            await conn.executemany(q["add_batch_move"], moves())
        return [m.version for m in todo]


async def _pg_store_result_lines(conn: Any) -> None:
    """Migration 3: render the result lines of batches still running from the columns that
    schema 2 kept (the same renderer as new outcomes), then drop ``body``."""
    old = await conn.fetch(_LEGACY_ROWS)
    await conn.executemany(
        "UPDATE requests SET result = $1 WHERE batch_id = $2 AND line = $3",
        [(rows.legacy_result_line(r), r[0], r[1]) for r in old],
    )
    await conn.execute("ALTER TABLE requests DROP COLUMN body")


# --- SQLite ----------------------------------------------------------------------------------


def upgrade_sqlite(conn: sqlite3.Connection, *, fresh_schema: bool = True) -> list[int]:
    """Bring the SQLite database of ``conn`` (autocommit mode) to the latest version, in one
    transaction; as ``upgrade``. ``PRAGMA user_version`` is the last version applied."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        todo = [m for m in migrations("sqlite") if m.version > version]
        if todo and version == 0 and fresh_schema:
            run_script(conn, schema_sql("sqlite"))
        elif todo:
            for migration in todo:
                run_script(conn, migration.sql)
                if migration.version in AFTER_SQLITE:
                    AFTER_SQLITE[migration.version](conn)
        if todo:
            conn.execute(f"PRAGMA user_version = {todo[-1].version}")
        q = queries.load("sqlite")
        if [tuple(r) for r in conn.execute(q["batch_moves"])] != moves():
            conn.execute(q["forget_batch_moves"])
            conn.executemany(q["add_batch_move"], moves())
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return [m.version for m in todo]


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement, inside the caller's transaction (``executescript``
    would commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    code = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
    if "".join(code).strip():
        raise errors.ConfigError(f"incomplete SQL statement at the end of a script: {statement}")


def _sqlite_store_result_lines(conn: sqlite3.Connection) -> None:
    """Migration 3, as ``_pg_store_result_lines``."""
    old = conn.execute(_LEGACY_ROWS).fetchall()
    conn.executemany(
        "UPDATE requests SET result = ? WHERE batch_id = ? AND line = ?",
        [(rows.legacy_result_line(r), r[0], r[1]) for r in old],
    )
    conn.execute("ALTER TABLE requests DROP COLUMN body")


# The answered requests of live batches, in the columns ``rows.legacy_result_line`` reads.
_LEGACY_ROWS = queries.substitute(
    "SELECT r.batch_id, r.line, r.custom_id, r.state, r.status_code, r.request_id, r.body,"
    " r.error_code, r.error_message FROM requests r JOIN batches b ON b.id = r.batch_id"
    " WHERE r.state IN ({state.succeeded}, {state.failed})"
    " AND b.status NOT IN {statuses.terminal}"
)


#: Python steps run right after the SQL migration of the same version, in its transaction:
#: for changes that need lowtide's own code (rendering result lines).
AFTER_POSTGRES: dict[int, Callable[[Any], Awaitable[None]]] = {3: _pg_store_result_lines}
AFTER_SQLITE: dict[int, Callable[[sqlite3.Connection], None]] = {3: _sqlite_store_result_lines}


async def upgrade_database(url: str) -> list[int]:
    """``lowtide db upgrade``: apply what is missing to the database at ``url``."""
    if url.startswith("sqlite:///"):
        from lowtide.store import open_store

        store = open_store(url)
        await store.open()  # the SQLite store upgrades its file when it opens
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
