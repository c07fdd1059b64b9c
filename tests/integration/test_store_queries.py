"""The two dialects' SQL files stay in step: the same statement names (a dialect that does not
need one says why), the same parameters, every statement used, no status or request state
written as a bare literal, and the same schema versions."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from lowtide import errors
from lowtide.store import migrations, queries, rows
from lowtide.store.queries import DIALECTS, Dialect

STORE = Path(queries.__file__).parent
_PARAM = {"postgres": re.compile(r"\$(\d+)"), "sqlite": re.compile(r"\?(\d+)")}


def raw(dialect: Dialect, name: str = "queries.sql") -> str:
    return resources.files("lowtide.store").joinpath(f"sql/{dialect}/{name}").read_text()


def test_both_dialects_define_the_same_statements() -> None:
    sqlite, postgres = queries.load("sqlite"), queries.load("postgres")
    declared = {d: set(q) | set(q.absent) for d, q in (("sqlite", sqlite), ("postgres", postgres))}
    assert declared["sqlite"] == declared["postgres"], (
        f"only in sqlite: {sorted(declared['sqlite'] - declared['postgres'])}; "
        f"only in postgres: {sorted(declared['postgres'] - declared['sqlite'])}"
    )
    assert not set(sqlite.absent) & set(postgres.absent), "a statement neither dialect has"
    assert len(sqlite) > 60 and len(postgres) > 60


def test_a_statement_takes_the_same_parameters_in_both_dialects() -> None:
    sqlite, postgres = queries.load("sqlite"), queries.load("postgres")
    for name in set(sqlite) & set(postgres):
        numbers = {
            d: {int(n) for n in _PARAM[d].findall(q[name])}
            for d, q in (("sqlite", sqlite), ("postgres", postgres))
        }
        # SQLite may leave a parameter out (a statement of two that share the same values);
        # it never has one PostgreSQL lacks.
        assert numbers["sqlite"] <= numbers["postgres"] or not numbers["postgres"], name
        if numbers["postgres"]:
            assert max(numbers["sqlite"], default=0) <= max(numbers["postgres"]), name


def test_every_statement_is_used_by_its_store() -> None:
    for dialect in DIALECTS:
        code = "".join(p.read_text() for p in (STORE / dialect).glob("*.py"))
        code += (STORE / "migrations.py").read_text()
        used = set(re.findall(r'"(\w+)"', code))
        unused = set(queries.load(dialect)) - used
        assert not unused, f"{dialect} statements no code uses: {sorted(unused)}"


def test_no_status_or_request_state_is_a_bare_literal() -> None:
    literal_state = re.compile(r"\bstate\b[^,]*?(=|<>|IN\s*\(|BETWEEN|DEFAULT)\s*\d")
    literal_status = re.compile(r"'(" + "|".join(s for s in _statuses()) + r")'")
    for dialect in DIALECTS:
        files = ["queries.sql", "schema.sql"]
        files += [f"migrations/{m}" for m in _migration_files(dialect)]
        for name in files:
            for number, line in enumerate(raw(dialect, name).splitlines(), 1):
                code = line.split("--", 1)[0]
                where = f"{dialect}/{name}:{number}: {line.strip()}"
                assert not literal_state.search(code), where
                assert not literal_status.search(code), where


def test_insert_batch_lists_the_columns_of_batch_params() -> None:
    for dialect in DIALECTS:
        sql = queries.load(dialect)["insert_batch"]
        columns = re.search(r"INSERT INTO batches \(([^)]*)\)", sql)
        assert columns is not None
        names = [c.strip() for c in columns[1].split(",") if c.strip() != "seq"]
        assert tuple(names) == rows.BATCH_COLUMNS, dialect


def test_both_dialects_have_the_same_schema_versions() -> None:
    def versions(dialect: str) -> list[tuple[int, str]]:
        return [(m.version, m.name) for m in migrations.migrations(dialect)]

    assert versions("sqlite") == versions("postgres")
    assert [v for v, _ in versions("sqlite")] == list(range(1, migrations.latest("sqlite") + 1))


def test_the_loader_refuses_what_it_cannot_read() -> None:
    with pytest.raises(errors.ConfigError, match="unknown constant"):
        queries.parse("sqlite", "-- name: x\nSELECT {status.nonsense}\n")
    with pytest.raises(errors.ConfigError, match="defined twice"):
        queries.parse("sqlite", "-- name: x\nSELECT 1\n-- name: x\nSELECT 2\n")
    with pytest.raises(errors.ConfigError, match="absent"):
        queries.parse("sqlite", "-- name: x\n-- just a comment\n")
    parsed = queries.parse("sqlite", "-- name: x\n-- absent: not needed here\n-- name: y\nSELECT 1")
    assert parsed.absent == {"x": "not needed here"} and dict(parsed) == {"y": "SELECT 1"}
    with pytest.raises(KeyError, match="declared absent: not needed here"):
        parsed["x"]
    assert queries.substitute("{state.leased} {status.failed} {from.in_progress}") == (
        "1 'failed' ('validating')"
    )
    with pytest.raises(KeyError, match="was not filled"):
        queries.fill("SELECT * FROM t WHERE {where}")


def _statuses() -> list[str]:
    from lowtide.domain.status import Status

    return [s.value for s in Status]


def _migration_files(dialect: Dialect) -> list[str]:
    folder = resources.files("lowtide.store").joinpath(f"sql/{dialect}/migrations")
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))


@pytest.mark.postgres
async def test_both_dialects_have_the_same_tables_and_columns(pg_url: str, tmp_path: Path) -> None:
    import sqlite3

    import asyncpg

    lite = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    try:
        migrations.upgrade_sqlite(lite)
        tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        in_sqlite = {(t, r[1]) for t in tables for r in lite.execute(f"PRAGMA table_info({t})")}
    finally:
        lite.close()
    conn = await asyncpg.connect(pg_url)
    try:
        found = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> 'schema_migrations'"
        )
    finally:
        await conn.close()
    assert in_sqlite == {(r[0], r[1]) for r in found}
