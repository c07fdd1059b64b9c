"""SQLite schema versions, as test_migrations.py checks PostgreSQL's: a fresh file
(``schema.sql``), a file upgraded through every migration and a file set up from
``lowtide db print --dialect sqlite`` end up with the same schema; a file of the first release,
with data in it, is upgraded by opening it and keeps its data; a migration that fails changes
nothing."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from lowtide import errors
from lowtide.cli.commands import cli
from lowtide.domain import lines
from lowtide.domain.records import Pricing
from lowtide.domain.status import Status
from lowtide.domain.work import SUCCEEDED, Outcome, RequestState
from lowtide.store import migrations, open_store
from lowtide.store.sqlite import SQLiteStore

FIRST_RELEASE = Path(__file__).with_name("test_sqlite_migrations_v1.sql")
ANSWER = b'{"id":"chatcmpl-1","choices":[],"usage":{"total_tokens":3}}'
PRICES = (0.8, 2.0, 0.5, "USD")


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def _normal(sql: str | None) -> str:
    """SQL text without comments, in lower case, with one space where any were."""
    text = re.sub(r"--[^\n]*", " ", sql or "").lower()
    return re.sub(r"\s*([(),=<>])\s*", r"\1", re.sub(r"\s+", " ", text)).strip()


def describe(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """A file's schema from sqlite_master and the pragmas, normalised: column order and the
    text of CREATE TABLE (which ALTER TABLE rewrites) are left out on purpose, as the
    PostgreSQL test does."""
    with connect(path) as c:
        tables = [
            r[0]
            for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        parts: dict[str, list[tuple[Any, ...]]] = {
            "tables": [(r[1], r[4]) for r in c.execute("PRAGMA table_list") if r[1] in tables],
            "columns": [],
            "indexes": [],
            "triggers": [
                (r[0], r[1], _normal(r[2]))
                for r in c.execute(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"
                    " ORDER BY name"
                )
            ],
            "version": [tuple(c.execute("PRAGMA user_version").fetchone())],
        }
        for table in tables:
            parts["columns"] += sorted(
                (table, r[1], r[2].upper(), r[3], r[4], r[5])
                for r in c.execute(f"PRAGMA table_xinfo({table})")
            )
            for index in c.execute(f"PRAGMA index_list({table})").fetchall():
                keys = [r[2] for r in c.execute(f"PRAGMA index_info({index[1]})")]
                sql = c.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (index[1],)
                ).fetchone()
                where = re.split(r"\bwhere\b", _normal(sql[0]), maxsplit=1)[1:] if sql else []
                parts["indexes"].append((table, index[1], index[2], index[4], keys, where))
        parts["indexes"].sort()
    return parts


def first_release_file(path: Path) -> None:
    """A database as the first release left it: its schema, user_version 1, and data."""
    with connect(path) as c:
        c.executescript(FIRST_RELEASE.read_text())
        c.execute("PRAGMA user_version = 1")
        c.execute(
            "INSERT INTO files (id, account, purpose, filename, bytes, created_at, expires_at,"
            " status, blob_key, seq) VALUES ('file-in', 'acct', 'batch', 'in.jsonl', 300, 5,"
            " NULL, 'processed', 'inputs/file-in', 1)"
        )
        for seq, (batch_id, status) in enumerate(
            [("batch_run", "in_progress"), ("batch_old", "completed")], 1
        ):
            c.execute(
                "INSERT INTO batches (id, seq, account, endpoint, input_file_id,"
                " completion_window, status, created_at, expires_at, total, completed,"
                " input_price, output_price, discount, currency)"
                " VALUES (?, ?, 'acct', '/v1/chat/completions', 'file-in', '24h', ?, 5,"
                " 9999999999, 3, 1, ?, ?, ?, ?)",
                (batch_id, seq, status, *PRICES),
            )
            c.executemany(
                "INSERT INTO requests (batch_id, line, custom_id, offset, length, state,"
                " status_code, request_id, body) VALUES (?, ?, ?, ?, 99, ?, ?, ?, ?)",
                [
                    (batch_id, 1, "ok-1", 0, 2, 200, "req-1", ANSWER),
                    (batch_id, 2, "todo-2", 100, 0, None, None, None),
                    (batch_id, 3, "todo-3", 200, 0, None, None, None),
                ],
            )


def fresh_file(path: Path) -> None:
    with connect(path) as c:
        assert migrations.upgrade_sqlite(c) == [m.version for m in migrations.migrations("sqlite")]


def test_fresh_schema_equals_all_migrations(tmp_path: Path) -> None:
    fresh, migrated, printed = tmp_path / "fresh.db", tmp_path / "migrated.db", tmp_path / "p.db"
    fresh_file(fresh)
    every = [m.version for m in migrations.migrations("sqlite")]
    with connect(migrated) as c:
        assert migrations.upgrade_sqlite(c, fresh_schema=False) == every
    with connect(printed) as c:  # what `lowtide db print --dialect sqlite` emits, run by hand
        c.executescript(migrations.install_script("sqlite"))

    expected = describe(fresh)
    assert expected["tables"] and expected["indexes"] and expected["triggers"]
    assert expected["version"] == [(migrations.latest("sqlite"),)]
    for path in (migrated, printed):
        got = describe(path)
        for part in expected:
            assert got[part] == expected[part], f"schema.sql and migrations differ in {part}"
    for path in (fresh, migrated, printed):  # each is up to date, moves included
        with connect(path) as c:
            assert migrations.upgrade_sqlite(c) == []
            assert c.execute("SELECT src, dst FROM batch_moves ORDER BY 1, 2").fetchall() == (
                migrations.moves()
            )


async def test_a_database_of_the_first_release_is_upgraded_with_its_data(tmp_path: Path) -> None:
    old, fresh = tmp_path / "old.db", tmp_path / "fresh.db"
    first_release_file(old)
    fresh_file(fresh)

    store = SQLiteStore(old)
    await store.open()  # the upgrade: migrations 2.. in one transaction
    try:
        file = await store.get_file("acct", "file-in")
        assert file is not None and (file.bytes, file.blob_key) == (300, "inputs/file-in")
        running = await store.get_batch("acct", "batch_run")
        assert running is not None
        assert (running.status, running.total, running.completed, running.pricing) == (
            Status.IN_PROGRESS,
            3,
            1,
            Pricing(*PRICES),
        )
        rows = [r async for chunk in store.iter_results("batch_run") for r in chunk]
        answered = lines.answered_line(
            "batch_run", 1, "ok-1", succeeded=True, status_code=200, request_id="req-1",
            body=ANSWER, error_code=None, error_message=None,
        )  # fmt: skip
        assert rows == [
            (1, RequestState.SUCCEEDED, None, answered),
            (2, RequestState.PENDING, "todo-2", None),
            (3, RequestState.PENDING, "todo-3", None),
        ]
        # The requests still waiting run on: their byte offsets survived the rename.
        claims = await store.claim_requests("batch_run", "w", 5, 0.0, 60.0)
        assert [(c.line, c.offset, c.length) for c in claims] == [(2, 100, 99), (3, 200, 99)]
        done = [
            Outcome(c.batch_id, c.line, c.epoch, SUCCEEDED, custom_id=c.custom_id) for c in claims
        ]
        assert await store.record_outcomes(done, 10) == ["batch_run"]
        # What later releases added works on the old file too.
        assert await store.rate_limit_hit("acct:create", 7, 0.0) == 1
        assert not await store.has_api_keys()
        assert await store.acquire_slots("gpu", "w", 2, 4, 0.0, 60.0) == 2
        old_batch = [r async for chunk in store.iter_results("batch_old") for r in chunk]
        assert [r[3] for r in old_batch] == [None] * 3  # a finished batch is not rendered again
    finally:
        await store.close()
    assert describe(old) == describe(fresh)


async def test_a_migration_that_fails_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    first_release_file(path)
    with connect(path) as c:  # something 0002 does not expect: its CREATE TABLE fails
        c.execute("CREATE TABLE api_keys (id TEXT)")
    before = describe(path)

    store = SQLiteStore(path)
    with pytest.raises(sqlite3.OperationalError, match="api_keys already exists"):
        await store.open()
    await store.close()
    assert describe(path) == before  # no table of 0002, user_version still 1
    assert before["version"] == [(1,)]


def test_only_pending_migrations_run(tmp_path: Path) -> None:
    path = tmp_path / "lowtide.db"
    with connect(path) as c:
        assert migrations.upgrade_sqlite(c, fresh_schema=False)
        assert migrations.upgrade_sqlite(c) == []
        c.execute("PRAGMA user_version = 6")  # as if 0007 had never been applied
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            migrations.upgrade_sqlite(c)  # it runs again, and fails loudly, atomically
        assert c.execute("PRAGMA user_version").fetchone()[0] == 6


def test_cli_db_print_and_upgrade(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli, ["db", "print", "--dialect", "sqlite"])
    assert printed.exit_code == 0, printed.output
    assert printed.output.strip() == migrations.install_script("sqlite").strip()

    path = tmp_path / "old.db"
    first_release_file(path)
    upgraded = runner.invoke(cli, ["db", "upgrade", "--database-url", f"sqlite:///{path}"])
    assert upgraded.exit_code == 0, upgraded.output
    assert describe(path)["version"] == [(migrations.latest("sqlite"),)]


async def test_open_store_upgrades_a_file_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    for _ in range(2):
        store = open_store(url)
        await store.open()
        await store.close()
    assert describe(tmp_path / "twice.db")["version"] == [(migrations.latest("sqlite"),)]


def test_a_script_runs_statement_by_statement_in_the_callers_transaction(tmp_path: Path) -> None:
    with connect(tmp_path / "s.db") as c:
        c.execute("BEGIN")
        migrations.run_script(c, "CREATE TABLE t (x INT); -- a comment; with a semicolon\n")
        assert c.in_transaction  # executescript would have committed
        with pytest.raises(errors.ConfigError, match="incomplete"):
            migrations.run_script(c, "INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2)\n")
        c.execute("ROLLBACK")
        assert c.execute("SELECT name FROM sqlite_master").fetchall() == []
