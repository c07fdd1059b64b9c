"""lowtide on PostgreSQL (``[server] database_url = "postgresql://..."``), in-process: each
test gets a database of its own on the machine's server. (A SIGKILLed server and ``lowtide
worker`` processes are in tests/acceptance.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import assert_each_once, chat_line

from .conftest import AppFactory, read_results, submit, wait_for

pytestmark = pytest.mark.postgres


def on_postgres(url: str, files: Path | None = None) -> str:
    server = f'\n[server]\ndatabase_url = "{url}"\n'
    if files is not None:
        server += f'storage_url = "file://{files}"\n'
    return server


def lines_for(n: int, prefix: str = "pg") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"question {i}") for i in range(n)]


async def db_counts(url: str, batch_id: str) -> tuple[str, int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT b.status, b.completed + b.failed,"
            " (SELECT COUNT(*) FROM requests r WHERE r.batch_id = b.id)"
            " FROM batches b WHERE b.id = $1",
            batch_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return str(row[0]), int(row[1]), int(row[2])


async def test_batch_runs_to_completion_on_postgres(
    pg_database: str, lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.002)
    app = await lowtide_app(upstream, extra=on_postgres(pg_database))
    c = app.client()
    lines = lines_for(300)
    batch = await wait_for(c, (await submit(c, lines)).id, patience=120)
    assert batch.status == "completed", batch
    outputs, errors = await read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert batch.request_counts.completed + batch.request_counts.failed == 300
    assert batch.request_counts.completed == len(outputs)
    # It really ran on PostgreSQL: the rows are there, and no SQLite file was made.
    assert await db_counts(pg_database, batch.id) == ("completed", 300, 300)
    assert not (app.data / "lowtide.db").exists()


async def test_two_servers_share_the_work_and_the_ceiling(
    pg_database: str, lowtide_app: AppFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Two servers on one database and one file store: a fleet of two. The backend's
    # max_concurrency holds across both (slot leases), and every line runs once.
    upstream.configure(latency=0.02)
    shared = on_postgres(pg_database, files=tmp_path / "files")
    first, second = [await lowtide_app(upstream, extra=shared, max_concurrency=4) for _ in "ab"]
    lines = lines_for(300, "fleet")
    batch_id = (await submit(first.client(), lines)).id
    batch = await wait_for(second.client(), batch_id, patience=120)
    assert batch.status == "completed", batch
    assert_each_once(lines, *await read_results(second.client(), batch))
    assert upstream.stats()["max_concurrency_seen"] <= 4
    assert await db_counts(pg_database, batch_id) == ("completed", 300, 300)
