"""PostgreSQL schema versions: a fresh install (``schema.sql``) and an upgraded database (every
migration in order) must end up with the same schema; upgrades are safe to start at once.
test_sqlite_migrations.py checks the same of SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from click.testing import CliRunner

from lowtide.cli.commands import cli
from lowtide.store import migrations
from lowtide.testing import postgres as pg

pytestmark = pytest.mark.postgres

# What a schema is made of, each as sorted rows. Column order is left out on purpose: a
# migration can only append a column, while schema.sql may list it where it reads best
# (the stores name every column they use, so the order never matters).
DESCRIBE = {
    "relations": """
        SELECT c.relname, c.relkind, COALESCE(c.reloptions, '{}') FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               COALESCE(col.collname, '')
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation col ON col.oid = a.attcollation
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
          AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, max_value, cycle
        FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')
        ORDER BY 1""",
    "versions": "SELECT version, name FROM schema_migrations ORDER BY 1",
    "moves": "SELECT src, dst FROM batch_moves ORDER BY 1, 2",
}


async def describe(url: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(url)
    try:
        return {
            part: [tuple(row) for row in await conn.fetch(sql)] for part, sql in DESCRIBE.items()
        }
    finally:
        await conn.close()


@pytest.fixture
async def empty_db() -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Makes empty databases (URLs), all dropped at the end."""
    problem = await pg.reachable()
    if problem:
        pytest.skip(problem)
    made: list[str] = []

    async def make() -> str:
        made.append(await pg.create_database())
        return pg.url_of(made[-1])

    yield make
    for name in made:
        await pg.drop_database(name)


async def upgrade_url(url: str, *, fresh_schema: bool = True) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return await migrations.upgrade(conn, fresh_schema=fresh_schema)
    finally:
        await conn.close()


async def test_fresh_schema_equals_all_migrations(empty_db: Callable[[], Awaitable[str]]) -> None:
    fresh, migrated, printed = await empty_db(), await empty_db(), await empty_db()
    every = [m.version for m in migrations.migrations()]
    assert every and every == sorted(set(every))
    assert await upgrade_url(fresh) == every
    assert await upgrade_url(migrated, fresh_schema=False) == every
    conn = await asyncpg.connect(printed)  # what `lowtide db print` emits, run by hand
    try:
        await conn.execute(migrations.install_script())
    finally:
        await conn.close()

    expected = await describe(fresh)
    assert expected["relations"] and expected["indexes"] and expected["constraints"]
    assert expected["triggers"] and expected["moves"] == migrations.moves()
    for url in (migrated, printed):
        got = await describe(url)
        for part in DESCRIBE:
            assert got[part] == expected[part], f"schema.sql and migrations differ in {part}"
    assert await upgrade_url(printed) == []  # a hand-installed database is up to date


async def test_concurrent_upgrades_apply_once(empty_db: Callable[[], Awaitable[str]]) -> None:
    url = await empty_db()
    applied = await asyncio.gather(*(upgrade_url(url) for _ in range(6)))
    known = migrations.migrations()
    assert sorted(applied, key=len) == [[]] * 5 + [[m.version for m in known]]
    assert (await describe(url))["versions"] == [(m.version, m.name) for m in known]


async def test_only_pending_migrations_run(empty_db: Callable[[], Awaitable[str]]) -> None:
    url = await empty_db()
    assert await upgrade_url(url, fresh_schema=False)
    assert await upgrade_url(url) == []
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM schema_migrations")  # as if 0001 had never been recorded
        with pytest.raises(asyncpg.DuplicateTableError):
            await migrations.upgrade(conn)  # it runs again, and fails loudly, atomically
        assert await conn.fetchval("SELECT COUNT(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


def test_cli_db_print_and_upgrade() -> None:
    problem = pg.run_sync(pg.reachable())
    if problem:
        pytest.skip(problem)
    runner = CliRunner()
    printed = runner.invoke(cli, ["db", "print"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.strip() == migrations.install_script().strip()
    sqlite = runner.invoke(cli, ["db", "print", "--dialect", "sqlite"])
    assert sqlite.exit_code == 0, sqlite.output
    assert sqlite.output.strip() == migrations.install_script("sqlite").strip()

    name = pg.run_sync(pg.create_database())
    try:
        url = pg.url_of(name)
        first = runner.invoke(cli, ["db", "upgrade", "--database-url", url])
        assert first.exit_code == 0, first.output
        assert "applied" in first.output
        again = runner.invoke(cli, ["db", "upgrade", "--database-url", url])
        assert again.exit_code == 0 and "up to date" in again.output
    finally:
        pg.run_sync(pg.drop_database(name))
