"""``lowtide serve`` on PostgreSQL (``[server] database_url = "postgresql://..."``), end to end:
each test gets a fresh database on the machine's server and drops it afterwards."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from lowtide.testing import postgres as pg
from lowtide.testing.harness import Lowtide, Upstream, Worker, free_port

from .conftest import (
    assert_each_once,
    chat_line,
    client,
    config_toml,
    read_results,
    submit,
    wait_for,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def database() -> Iterator[str]:
    """The URL of a fresh, empty database: lowtide creates its schema when it starts."""
    problem = pg.run_sync(pg.reachable())
    if problem:
        pytest.skip(problem)
    name = pg.run_sync(pg.create_database())
    yield pg.url_of(name)
    pg.run_sync(pg.drop_database(name))


def postgres_toml(
    upstream: Upstream, url: str, *, files: Path | None = None, **options: object
) -> str:
    server = f'\n[server]\ndatabase_url = "{url}"\n'
    if files is not None:
        server += f'storage_url = "file://{files}"\n'
    toml = config_toml(upstream, extra=server, **options)  # type: ignore[arg-type]
    assert "lease_seconds = 10" in toml
    # Short leases: a killed process's requests are taken over soon after.
    return toml.replace("lease_seconds = 10", "lease_seconds = 2")


def start(tmp_path: Path, name: str, toml: str) -> Lowtide:
    workdir = tmp_path / name
    workdir.mkdir()
    server = Lowtide(workdir, toml)
    server.start()
    return server


def lines_for(n: int, prefix: str = "pg") -> list[dict]:
    return [chat_line(f"{prefix}-{i}", f"question {i}") for i in range(n)]


def db_counts(url: str, batch_id: str) -> tuple[str, int, int]:
    async def fetch() -> tuple[str, int, int]:
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
        return str(row[0]), int(row[1]), int(row[2])

    return pg.run_sync(fetch())


def test_batch_runs_to_completion_on_postgres(
    upstream: Upstream, database: str, tmp_path: Path
) -> None:
    upstream.configure(latency=0.002)
    server = start(tmp_path, "lowtide", postgres_toml(upstream, database))
    try:
        c = client(server)
        lines = lines_for(300)
        batch = wait_for(c, submit(c, lines).id, timeout=120)
        assert batch.status == "completed", batch
        outputs, errors = read_results(c, batch)
        assert_each_once(lines, outputs, errors)
        assert batch.request_counts.completed + batch.request_counts.failed == 300
        assert batch.request_counts.completed == len(outputs)
        # It really ran on PostgreSQL: the rows are there, and no SQLite file was made.
        assert db_counts(database, batch.id) == ("completed", 300, 300)
        assert not (server.workdir / "data" / "lowtide.db").exists()
    finally:
        server.stop()


def test_two_servers_share_the_work_and_the_ceiling(
    upstream: Upstream, database: str, tmp_path: Path
) -> None:
    # Two processes on one database and one file store: a fleet of two. The backend's
    # max_concurrency holds across both (slot leases), and every line runs once.
    upstream.configure(latency=0.02)
    toml = postgres_toml(upstream, database, files=tmp_path / "files", max_concurrency=4)
    servers = [start(tmp_path, f"lowtide{i}", toml) for i in range(2)]
    try:
        c = client(servers[0])
        lines = lines_for(300, "fleet")
        batch_id = submit(c, lines).id
        batch = wait_for(client(servers[1]), batch_id, timeout=120)
        assert batch.status == "completed", batch
        assert_each_once(lines, *read_results(client(servers[1]), batch))
        assert upstream.stats()["max_concurrency_seen"] <= 4
    finally:
        for server in servers:
            server.stop()


def test_kill_9_and_restart_on_postgres(upstream: Upstream, database: str, tmp_path: Path) -> None:
    upstream.configure(latency=0.01)
    server = start(tmp_path, "lowtide", postgres_toml(upstream, database, max_concurrency=8))
    try:
        c = client(server)
        lines = lines_for(300, "crash")
        batch_id = submit(c, lines).id
        wait_for(c, batch_id, {"in_progress", "finalizing", "completed"}, timeout=60)
        server.kill()  # leases, slots and maybe a finalisation are left behind
        server.start()
        batch = wait_for(client(server), batch_id, timeout=120)
        assert batch.status == "completed", batch
        assert_each_once(lines, *read_results(client(server), batch))
        assert db_counts(database, batch_id) == ("completed", 300, 300)
    finally:
        server.stop()


def test_a_worker_serves_its_own_metrics(tmp_path, database):
    files = tmp_path / "files"
    toml = config_toml(
        None, extra=f'\n[server]\ndatabase_url = "{database}"\nstorage_url = "file://{files}"\n'
    )
    (tmp_path / "api").mkdir()
    api = Lowtide(tmp_path / "api", toml, extra_args=("--api-only",))
    api.start()
    port = free_port()
    worker = Worker(tmp_path / "worker", api.config_path, extra_args=("--metrics-port", str(port)))
    worker.start()
    try:
        c = client(api)
        lines = [
            chat_line(f"w{i}", "x", model="batch-test-model", url="/v1/chat/ds-test")
            for i in range(7)
        ]
        batch = wait_for(c, submit(c, lines, endpoint="/v1/chat/ds-test").id)
        assert batch.request_counts.completed == 7
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        succeeded = [
            line
            for line in text.splitlines()
            if line.startswith("lowtide_requests_succeeded_total{")
        ]
        assert succeeded and float(succeeded[0].rsplit(" ", 1)[1]) == 7
    finally:
        worker.stop()
        api.stop()
