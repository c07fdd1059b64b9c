"""The scale-out mode end to end: two ``lowtide serve --api-only`` processes and three
``lowtide worker`` processes on one PostgreSQL database and one S3-compatible store (moto on
loopback), two accounts driving them with the ``openai`` SDK, and the busiest worker SIGKILLed
(or frozen with SIGSTOP) while its requests are in flight.

What must hold across the fleet: every line in exactly one result file, once; usage billed
once; each batch finalised once; and the backend never sees more requests at a time than its
``max_concurrency``, even though the dead worker's slot leases are left behind and must run
out before the others can take its share of the ceiling. (A frozen worker that goes on may
overrun the ceiling by what it had already started: docs/deployment.md, "Failures".)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from lowtide.testing import postgres as pg
from lowtide.testing.harness import Lowtide, Upstream, Worker
from tests.support.moto import S3_KEY, S3_REGION, MotoServer

from .conftest import (
    ALICE,
    BOB,
    assert_each_once,
    chat_line,
    client,
    config_toml,
    read_results,
    submit,
    wait_for,
)

pytestmark = pytest.mark.postgres

CEILING = 6  # the backend's max_concurrency, fleet-wide: small, so that it is always reached
LATENCY = 0.05  # seconds per answer: at the ceiling, about 120 requests/s for the fleet
LEASE = 3  # seconds: a dead worker's requests and slots come back this soon
LINES = 400  # per account
PREFIX = "lowtide/fleet"


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, empty database (the first process to start creates the schema), set up as
    docs/deployment.md advises: a session frozen inside a transaction is ended after about
    a lease, so that the row locks it holds (its slots, say) do not outlive its leases."""
    problem = pg.run_sync(pg.reachable())
    if problem:
        pytest.skip(problem)
    name = pg.run_sync(pg.create_database())
    url = pg.url_of(name)
    query(url, f"ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '{LEASE}s'")
    yield url
    pg.run_sync(pg.drop_database(name))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


def fleet_toml(upstream: Upstream, database: str, moto: MotoServer, bucket: str) -> str:
    shared = f"""
[server]
database_url = "{database}"
storage_url = "s3://{bucket}/{PREFIX}"

[s3]
endpoint_url = "{moto.endpoint}"
region = "{S3_REGION}"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_KEY}"
"""
    toml = config_toml(upstream, max_concurrency=CEILING, extra=shared)
    assert "lease_seconds = 10" in toml
    return toml.replace("lease_seconds = 10", f"lease_seconds = {LEASE}")


@dataclass
class Fleet:
    bucket: str
    apis: list[Lowtide]
    workers: list[Worker]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for api in self.apis:
            api.stop()


@pytest.fixture
def fleet(tmp_path: Path, upstream: Upstream, database: str, moto: MotoServer) -> Iterator[Fleet]:
    bucket = moto.new_bucket()
    toml = fleet_toml(upstream, database, moto, bucket)
    running = Fleet(bucket, [], [])
    try:
        for i in range(2):
            workdir = tmp_path / f"api{i}"
            workdir.mkdir()
            api = Lowtide(workdir, toml, extra_args=["--api-only"])
            running.apis.append(api)
            api.start()
        for i in range(3):
            worker = Worker(tmp_path / f"worker{i}", running.apis[0].config_path)
            running.workers.append(worker)
            worker.start()
        yield running
    finally:
        running.stop()


# --- looking into the shared database ------------------------------------------------------


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return pg.run_sync(fetch())


def holdings(url: str, worker: Worker) -> tuple[int, int]:
    """(requests leased, backend slots held) by ``worker``, as the database records them."""
    owner = worker.owner_prefix() + "%"
    rows = query(
        url,
        "SELECT (SELECT COUNT(*) FROM requests WHERE state = 1 AND lease_owner LIKE $1),"
        " (SELECT COUNT(*) FROM backend_slots WHERE owner LIKE $1)",
        owner,
    )
    return int(rows[0][0]), int(rows[0][1])


def lines_done(url: str) -> int:
    """Lines of every batch that have ended, as the database records them."""
    return int(query(url, "SELECT COALESCE(SUM(completed + failed), 0) FROM batches")[0][0])


def busiest_worker(url: str, workers: list[Worker], timeout: float = 60.0) -> Worker:
    """Once both batches are well under way, the worker with the most slots that is running
    requests (it holds leased requests and slots at the same time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lines_done(url) >= LINES // 2:  # a quarter of the work is done
            held = {w.pid: holdings(url, w) for w in workers}
            busy = [w for w in workers if min(held[w.pid]) > 0]
            if busy:
                return max(busy, key=lambda w: held[w.pid][1])
        time.sleep(0.05)
    raise AssertionError("no worker was running requests")


# --- the tests -------------------------------------------------------------------------------


@dataclass
class Run:
    """Two accounts' batches, each created on one API process and followed on the other."""

    fleet: Fleet
    lines: dict[str, list[dict[str, Any]]]
    ids: dict[str, str]

    @classmethod
    def start(cls, fleet: Fleet) -> Run:
        api0, api1 = fleet.apis
        lines = {
            ALICE: [chat_line(f"alice-{i}", f"alice asks {i}") for i in range(LINES)],
            BOB: [chat_line(f"bob-{i}", f"bob asks question {i}") for i in range(LINES)],
        }
        ids = {
            ALICE: submit(client(api0, ALICE), lines[ALICE]).id,
            BOB: submit(client(api1, BOB), lines[BOB]).id,
        }
        return cls(fleet, lines, ids)

    def follower(self, key: str) -> openai.OpenAI:
        api0, api1 = self.fleet.apis
        return client(api1 if key == ALICE else api0, key)

    def check(self, database: str, moto: MotoServer) -> None:
        """Both batches completed, every line once in the output, usage billed once, each
        batch finalised once, nothing left leased."""
        for key, batch_id in self.ids.items():
            follower = self.follower(key)
            batch = wait_for(follower, batch_id, timeout=60)
            assert batch.status == "completed", batch
            assert batch.request_counts.total == LINES
            assert batch.request_counts.completed == LINES and batch.request_counts.failed == 0
            outputs, errors = read_results(follower, batch)
            assert_each_once(self.lines[key], outputs, errors)
            assert not errors and all(o["response"]["status_code"] == 200 for o in outputs)
            assert_billed_once(batch, outputs)
            assert_finalised_once(database, moto, self.fleet.bucket, batch)
        assert query(database, "SELECT COUNT(*) FROM requests WHERE state = 1")[0][0] == 0
        leased = query(database, "SELECT COUNT(*) FROM batches WHERE lease_owner IS NOT NULL")
        assert leased[0][0] == 0


@pytest.mark.slow
def test_a_fleet_survives_a_killed_worker_within_the_ceiling(
    fleet: Fleet, upstream: Upstream, database: str, moto: MotoServer
) -> None:
    upstream.configure(latency=LATENCY)
    run = Run.start(fleet)

    victim = busiest_worker(database, fleet.workers)
    victim.kill()
    # A SIGKILL releases nothing: its requests and slots stay leased until the leases run out.
    leased_at_kill, slots_at_kill = holdings(database, victim)
    assert leased_at_kill > 0 and slots_at_kill > 0

    run.check(database, moto)
    stats = upstream.stats()
    # The ceiling held across the fleet, through the kill and the take-over of the dead
    # worker's slots, and was reached (so it was what limited the fleet).
    assert stats["max_concurrency_seen"] == CEILING, stats
    # Each line reached the backend at least once; only the dead worker's leased lines (sent
    # and not yet committed, cut off in flight, or claimed ahead and not yet sent) may have
    # been sent again by the others.
    total = 2 * LINES
    assert total <= stats["requests"] <= total + leased_at_kill, (stats, leased_at_kill)
    assert stats["ok"] == stats["requests"] - stats["client_disconnects"]
    # Its slot leases ran out and the others took them over: none is recorded as its now.
    assert holdings(database, victim) == (0, 0)
    assert all(
        w.proc is not None and w.proc.poll() is None for w in fleet.workers if w is not victim
    )


@pytest.mark.slow
def test_a_worker_frozen_past_its_lease_loses_its_slots_and_no_line(
    fleet: Fleet, upstream: Upstream, database: str, moto: MotoServer
) -> None:
    # SIGSTOP (a VM pause, a stalled host) keeps the process and its sockets. Frozen past
    # its leases, it loses its requests and slots to the others; when it goes on, what it
    # had done meanwhile is refused (fenced), and it starts nothing new on its lapsed slots
    # (tests/integration/test_capacity.py shows that part alone).
    upstream.configure(latency=LATENCY)
    run = Run.start(fleet)

    victim = busiest_worker(database, fleet.workers)
    victim.pause()
    try:
        slots_at_pause = holdings(database, victim)[1]
        # Its slot leases run out (after LEASE seconds), and the others take them. The deadline
        # only turns a hang into a failure.
        deadline = time.monotonic() + 60
        while holdings(database, victim)[1] > 0:
            assert time.monotonic() < deadline, "the frozen worker's slots were not taken over"
            time.sleep(0.1)
        # The others run on its former slots for a while: a ceiling's worth of lines ends
        # after the take-over, while it is still frozen.
        taken_over_at = lines_done(database)
        while lines_done(database) < min(taken_over_at + CEILING, 2 * LINES):
            assert time.monotonic() < deadline, "the others made no progress"
            time.sleep(0.05)
    finally:
        victim.resume()

    run.check(database, moto)
    # Requests it had started but not yet sent when it froze (reading the line from S3,
    # say) go out when it continues, on slots that are no longer its: the one overrun the
    # ceiling allows, at most the slots it held, for one request's time (docs/deployment.md).
    stats = upstream.stats()
    assert stats["max_concurrency_seen"] <= CEILING + slots_at_pause, (stats, slots_at_pause)
    assert victim.proc is not None and victim.proc.poll() is None


def assert_billed_once(batch: Any, outputs: list[dict[str, Any]]) -> None:
    """The batch's usage is the sum of its output lines' usage: no line counted twice."""
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (prompt, completion)
    assert batch.usage.total_tokens == prompt + completion


def assert_finalised_once(url: str, moto: MotoServer, bucket: str, batch: Any) -> None:
    """One output file record and one result object: committed and published once."""
    files = query(url, "SELECT id, purpose FROM files WHERE filename LIKE $1", batch.id + "_%")
    assert [(r["id"], r["purpose"]) for r in files] == [(batch.output_file_id, "batch_output")]
    prefix = f"{PREFIX}/results/{batch.id}/"
    listed = moto.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    assert [o["Key"] for o in listed.get("Contents", [])] == [prefix + "output"]


@pytest.mark.measure_children
def test_a_worker_alone_refuses_sqlite(tmp_path: Path) -> None:
    """``lowtide worker`` needs the shared database: on SQLite it says so and exits."""
    config = tmp_path / "lowtide.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    worker = Worker(tmp_path / "worker", config)
    with pytest.raises(RuntimeError, match="shared database"):
        worker.start()
