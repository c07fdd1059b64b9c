"""Schema 3 keeps each request's rendered result line instead of the backend's answer body.

A database written by schema 2 may hold answered requests of batches still running: the
upgrade renders their lines from the old columns (the same renderer as new outcomes), so the
finaliser writes them exactly as it writes lines recorded after the upgrade. Both stores.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from lowtide.domain import lines
from lowtide.store import migrations, open_store
from lowtide.testing import postgres as pg

ANSWER = b'{"id":"chatcmpl-1","choices":[],"usage":{"total_tokens":3}}'
BATCH_COLUMNS = (
    "id, seq, account, endpoint, input_file_id, completion_window, status, created_at,"
    " expires_at, total, input_price, output_price, discount, currency"
)
PRICES = (0.0, 0.0, 0.5, "USD")
ENDPOINT = "/v1/chat/completions"
# (line, custom_id, state, status_code, request_id, body, error_code, error_message)
OLD_ROWS: list[tuple[Any, ...]] = [
    (1, "ok-1", 2, 200, "req-1", ANSWER, None, None),
    (2, "bad-2", 3, 400, "req-2", b'{"error":{"message":"no"}}', "http_400", "no"),
    (3, "waiting-3", 0, None, None, None, None, None),
]


def expected_line(batch_id: str, row: Sequence[Any]) -> bytes:
    line, custom_id, state, status_code, request_id, body, code, message = row
    return lines.answered_line(
        batch_id,
        line,
        custom_id,
        succeeded=state == 2,
        status_code=status_code,
        request_id=request_id,
        body=body,
        error_code=code,
        error_message=message,
    )


def schema_2_sqlite() -> str:
    """The SQLite schema as version 2 had it: ``body`` where version 3 has ``result``."""
    return "\n".join(m.sql for m in migrations.migrations("sqlite")[:2])


async def results(url: str, batch_id: str) -> list[tuple[Any, ...]]:
    store = open_store(url)
    await store.open()
    try:
        return [row async for chunk in store.iter_results(batch_id) for row in chunk]
    finally:
        await store.close()


async def test_sqlite_schema_2_database_gets_rendered_lines(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema_2_sqlite())
    conn.execute("PRAGMA user_version=2")
    for seq, (batch_id, status) in enumerate(
        [("batch_run", "in_progress"), ("batch_old", "completed")]
    ):
        conn.execute(
            f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                batch_id,
                seq,
                "acct",
                "/v1/chat/completions",
                "file-x",
                "24h",
                status,
                1,
                2,
                3,
                *PRICES,
            ),
        )
        conn.executemany(
            "INSERT INTO requests (batch_id, line, custom_id, offset, length, state, status_code,"
            " request_id, body, error_code, error_message) VALUES (?,?,?,0,1,?,?,?,?,?,?)",
            [(batch_id, *row) for row in OLD_ROWS],
        )
    conn.commit()
    conn.close()

    running = await results(f"sqlite:///{path}", "batch_run")

    assert [r[3] for r in running] == [
        expected_line("batch_run", OLD_ROWS[0]),
        expected_line("batch_run", OLD_ROWS[1]),
        None,  # never ran: the finaliser renders it
    ]
    assert orjson.loads(running[0][3])["response"]["body"] == orjson.loads(ANSWER)
    assert running[2][2] == "waiting-3"
    # A finished batch's files are written already: its rows are not rendered again.
    assert [r[3] for r in await results(f"sqlite:///{path}", "batch_old")] == [None] * 3
    conn = sqlite3.connect(path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    assert "result" in columns and "body" not in columns and "byte_offset" in columns
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.latest("sqlite")
    conn.close()


@pytest.mark.postgres
async def test_postgres_migration_3_renders_lines_of_running_batches() -> None:
    problem = await pg.reachable()
    if problem:
        pytest.skip(problem)
    name = await pg.create_database()
    url = pg.url_of(name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(migrations.BOOKKEEPING)
            for m in migrations.migrations()[:2]:  # the database as lowtide left it at 0002
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    m.version,
                    m.name,
                )
            for batch_id, status in [("batch_run", "in_progress"), ("batch_old", "completed")]:
                await conn.execute(
                    "INSERT INTO batches (id, account, endpoint, input_file_id,"
                    " completion_window, status, created_at, expires_at, total, input_price,"
                    " output_price, discount, currency)"
                    " VALUES ($1, 'acct', '/v1/chat/completions', 'file-x', '24h', $2, 1, 2, 3,"
                    " 0, 0, 0.5, 'USD')",
                    batch_id,
                    status,
                )
                await conn.executemany(
                    "INSERT INTO requests (batch_id, line, custom_id, byte_offset, length, state,"
                    " status_code, request_id, body, error_code, error_message)"
                    " VALUES ($1, $2, $3, 0, 1, $4, $5, $6, $7, $8, $9)",
                    [(batch_id, *row) for row in OLD_ROWS],
                )
            assert await migrations.upgrade(conn) == [
                m.version for m in migrations.migrations()[2:]
            ]
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'"
            )
            assert {"result"} <= {c[0] for c in columns} and "body" not in {c[0] for c in columns}
        finally:
            await conn.close()

        running = await results(url, "batch_run")
        assert [r[3] for r in running] == [
            expected_line("batch_run", OLD_ROWS[0]),
            expected_line("batch_run", OLD_ROWS[1]),
            None,
        ]
        assert [r[3] for r in await results(url, "batch_old")] == [None] * 3
    finally:
        await pg.drop_database(name)
