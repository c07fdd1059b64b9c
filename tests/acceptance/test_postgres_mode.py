"""``lowtide serve`` and ``lowtide worker`` as processes on PostgreSQL, with files on S3
(moto's server on loopback): a SIGKILL mid-batch and a restart, and a worker's own /metrics.
Each test gets a fresh database on the machine's server and drops it afterwards. (What needs
no process of its own is in tests/inprocess/test_postgres_mode.py.)"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from lowtide.testing import postgres as pg
from lowtide.testing.harness import Lowtide, Upstream, Worker, free_port
from tests.support.moto import MotoServer

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


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


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


@pytest.mark.slow
def test_kill_9_and_restart_on_postgres_and_s3(
    upstream: Upstream, database: str, moto: MotoServer, tmp_path: Path
) -> None:
    upstream.configure(latency=0.01)
    bucket = moto.new_bucket()
    toml = config_toml(
        upstream,
        max_concurrency=8,
        engine={"lease_seconds": 2},  # a killed process's requests are taken over soon after
        extra=moto.toml(bucket, "lowtide").replace(
            "[server]\n", f'[server]\ndatabase_url = "{database}"\n'
        ),
    )
    server = Lowtide(tmp_path, toml)
    server.start()
    try:
        c = client(server)
        lines = [chat_line(f"crash-{i}", f"question {i}") for i in range(300)]
        batch_id = submit(c, lines).id
        wait_for(c, batch_id, {"in_progress", "finalizing", "completed"}, timeout=60)
        server.kill()  # leases, slots and maybe a finalisation are left behind
        server.start()
        batch = wait_for(client(server), batch_id, timeout=120)
        assert batch.status == "completed", batch
        assert_each_once(lines, *read_results(client(server), batch))
        assert db_counts(database, batch_id) == ("completed", 300, 300)
        keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert sorted(keys) == sorted(
            [f"lowtide/inputs/{batch.input_file_id}", f"lowtide/results/{batch_id}/output"]
        )
    finally:
        server.stop()


@pytest.mark.measure_children
def test_a_worker_serves_its_own_metrics(tmp_path: Path, database: str) -> None:
    files = tmp_path / "files"
    toml = config_toml(
        None, extra=f'\n[server]\ndatabase_url = "{database}"\nstorage_url = "file://{files}"\n'
    )
    (tmp_path / "api").mkdir()
    api = Lowtide(tmp_path / "api", toml, extra_args=("--api-only",))
    api.start()
    port = free_port()
    worker = Worker(tmp_path / "worker", api.config_path, extra_args=("--metrics-port", str(port)))
    try:
        worker.start()
        c = client(api)
        lines = [
            chat_line(f"w{i}", "x", model="batch-test-model", url="/v1/chat/ds-test")
            for i in range(7)
        ]
        batch = wait_for(c, submit(c, lines, endpoint="/v1/chat/ds-test").id)
        assert batch.request_counts.completed == 7
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
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
