"""Reliability: nothing lost or done twice, whatever happens to the process or backend.

The small versions of ``bench/chaos.py`` and ``bench/faults.py`` run here as the user runs them
(a subprocess printing JSON), plus the process signals: SIGSTOP past the lease, and SIGTERM
with requests that never answer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from lowtide.store import migrations
from lowtide.testing.children import unmeasured_env
from lowtide.testing.harness import Lowtide, Upstream
from lowtide.testing.invariants import check_batch
from tests.support import commands

from .conftest import chat_line, client, config_toml, jsonl, submit, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _fault_cases() -> list[str]:
    """The script's own list of cases, so that a case added there is tested here."""
    name = "bench_faults"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "faults.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses need it
    spec.loader.exec_module(module)
    return list(module.CASE_NAMES)


# The scripts take a minute or two on a quiet machine: their deadline (and the tests') only
# turns a hang into a failure.
SCRIPT_TIMEOUT = 540
slow = pytest.mark.timeout(SCRIPT_TIMEOUT + 60)


def run_script(name: str, *args: str, timeout: float = SCRIPT_TIMEOUT) -> Any:
    # A child of the harness: it dies with the test run, even a killed one.
    proc = commands.run(
        [sys.executable, str(ROOT / "bench" / name), *args, "--json"],
        timeout=timeout,
        cwd=ROOT,
        env=unmeasured_env(),
    )
    assert proc.stdout, f"{name} printed nothing:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


@pytest.mark.slow
@slow
def test_chaos_kills_lose_and_double_nothing(tmp_path: Path) -> None:
    r = run_script(
        "chaos.py",
        *("--lines", "1000", "--kills", "5", "--final-kills", "1"),
        *("--cancel-lines", "200", "--expiry-lines", "200", "--expiry-kills", "2"),
        *("--workdir", str(tmp_path)),
    )
    assert r["problems"] == []
    assert (r["lost"], r["duplicated"], r["double_billed"]) == (0, 0, 0)
    assert r["kills"] >= 5
    for name, status in r["statuses"].items():
        assert status["got"] == status["expected"], name
    # A crash repeats only calls whose results it lost: those leased when it struck.
    assert r["repeated_calls"] <= r["in_flight_at_kills"]
    assert r["max_repeats_one_restart"] <= r["window"]
    assert r["resume_median_s"] is not None  # restarts did dispatch again


@pytest.fixture(scope="module")
def fault_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of every quick case, four at a time; each test below reads its own case.

    Four cases at once on a small machine can hold a request 30 ms or more between lowtide
    and the upstream: a request that left before a 429 arrived is in flight, not early.
    """
    workdir = tmp_path_factory.mktemp("faults")
    results = run_script(
        "faults.py",
        *("--quick", "--jobs", "4", "--early-grace-ms", "100", "--workdir", str(workdir)),
    )
    return {r["name"]: r for r in results}


FAULT_CASES = _fault_cases()


@pytest.mark.slow
@slow  # the first test of a worker runs bench/faults.py (the module's fixture)
@pytest.mark.parametrize("case", _fault_cases())
def test_backend_fault_keeps_each_line_once(case: str, fault_results: dict[str, Any]) -> None:
    """Whatever the fault, each line ends once, billed once, and nothing is sent early."""
    r = fault_results[case]
    assert r["invariant_problems"] == [], r
    assert (r["lost"], r["duplicated"], r["double_billed"]) == (0, 0, 0)
    # No line is sent again before the Retry-After its own 429 announced: causal (lowtide
    # reads the 429 after the backend sent it, then waits), so true on any machine.
    assert r["early_same_line"] == 0, r
    # r["early"], requests of *other* lines arriving inside a pause, is not asserted: a request
    # sent before the 429 was read arrives late by however long a loaded machine holds it
    # (199 ms was seen at load 15, past the 100 ms grace). bench/faults.py reports it.


# The script's problem that says so (see above): a guess about the machine, not a fact.
_BACKEND_WIDE_EARLY = "reached the backend before its Retry-After deadline"


@slow
@pytest.mark.parametrize("case", FAULT_CASES)
def test_backend_fault_keeps_its_promise(case: str, fault_results: dict[str, Any]) -> None:
    """Retryable faults end in success, 4xx are sent once, exhausted lines carry a code."""
    r = fault_results[case]
    assert [p for p in r["problems"] if _BACKEND_WIDE_EARLY not in p] == [], r
    assert r["succeeded"] == r["should_succeed"]


def _db(server: Lowtide) -> closing[sqlite3.Connection]:
    path = server.workdir / "data" / "lowtide.db"
    return closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True))


def _judge(server: Lowtide, batch: Any, lines: list[dict[str, Any]]) -> None:
    c = client(server)
    out = c.files.content(batch.output_file_id).content if batch.output_file_id else b""
    err = c.files.content(batch.error_file_id).content if batch.error_file_id else b""
    db = server.workdir / "data" / "lowtide.db"
    report = check_batch(jsonl(lines), out, err, batch.model_dump(), db)
    assert report.problems == ()


def _wait_completed(server: Lowtide, batch_id: str, n: int) -> None:
    c = client(server)
    deadline = time.monotonic() + 60
    while c.batches.retrieve(batch_id).request_counts.completed < n:
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.05)


def _wait_leases_run_out(server: Lowtide) -> int:
    """Poll the frozen server's database until no request is leased into the future; return
    how many leased requests are past their lease then. The deadline only turns a hang into
    a failure."""
    deadline = time.monotonic() + 60
    while True:
        with _db(server) as conn:
            expired, live = conn.execute(
                "SELECT COALESCE(SUM(lease_until < :now), 0), COALESCE(SUM(lease_until >= :now), 0)"
                " FROM requests WHERE state = 1",
                {"now": time.time()},
            ).fetchone()
        if live == 0:
            return int(expired)
        assert time.monotonic() < deadline, f"{live} leases never ran out"
        time.sleep(0.1)


def test_sigstop_past_the_lease_then_sigcont_completes_each_line_once(
    tmp_path: Path, upstream: Upstream
) -> None:
    upstream.configure(latency=0.05)
    toml = config_toml(upstream, max_concurrency=8)
    workdir = tmp_path / "server"
    workdir.mkdir()
    server = Lowtide(workdir, toml.replace("lease_seconds = 10", "lease_seconds = 1"))
    server.start()
    try:
        c = client(server)
        lines = [chat_line(f"s-{i}", f"stopped {i}") for i in range(400)]
        batch = submit(c, lines)
        _wait_completed(server, batch.id, 50)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            # Frozen, it renews nothing: wait until every lease it holds has run out.
            expired = _wait_leases_run_out(server)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        batch = wait_for(c, batch.id, timeout=120)
        assert expired > 0, "nothing was leased while the process was stopped"
        assert batch.status == "completed" and batch.request_counts.completed == 400
        _judge(server, batch, lines)
    finally:
        server.stop()


def test_sigterm_drains_hung_requests_and_commits_what_was_answered(
    make_server: Any, upstream: Upstream
) -> None:
    upstream.configure(latency=0.01)
    server = make_server(upstream, max_concurrency=8, extra="shutdown_grace = 1\n")
    c = client(server)
    # Every 50th request never answers: the drain must give up on them and release them.
    lines = [
        chat_line(f"t-{i}", f"term {i}" + (" HANGFOREVER" if i % 50 == 49 else ""))
        for i in range(300)
    ]
    batch = submit(c, lines)
    deadline = time.monotonic() + 60
    while upstream.stats()["hung"] < 4:
        assert time.monotonic() < deadline, "the hanging requests were never sent"
        time.sleep(0.05)
    assert server.terminate(timeout=30) == 0
    with _db(server) as conn:
        leased, succeeded = conn.execute(
            "SELECT COALESCE(SUM(state = 1), 0), COALESCE(SUM(state = 2), 0) FROM requests"
        ).fetchone()
    assert leased == 0  # released for the next run, not left to expire
    assert succeeded == upstream.stats()["ok"]  # every answer received was committed
    upstream.configure(hang_contains="NEVER-MATCHES")  # the backend recovers
    server.start()
    batch = wait_for(c, batch.id, timeout=60)
    assert batch.status == "completed" and batch.request_counts.completed == 300
    _judge(server, batch, lines)


def _result(custom_id: str, prompt: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1}
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": "r", "body": {"usage": usage}},
        "error": None,
    }


def test_the_checker_sees_lost_duplicated_torn_and_double_billed_lines() -> None:
    """A checker that never fails proves nothing: feed it each kind of damage."""
    lines = [chat_line(f"c-{i}", "x") for i in range(4)]
    good = [_result(f"c-{i}", 10) for i in range(4)]
    usage = {"input_tokens": 40, "output_tokens": 4}
    batch = {
        "id": "batch_x",
        "status": "completed",
        "request_counts": {"total": 4, "completed": 4, "failed": 0},
        "usage": usage,
    }
    assert check_batch(jsonl(lines), jsonl(good), b"", batch).ok
    damaged = check_batch(
        jsonl(lines),
        jsonl([good[0], good[1], good[1]]) + b'{"custom_id": "c-3", "resp\n',
        b"",
        {**batch, "usage": {"input_tokens": 50, "output_tokens": 5}},
    )
    assert damaged.lost == ("c-2", "c-3") and damaged.duplicated == ("c-1",)
    assert damaged.torn == 1
    assert damaged.billed_minus_lines.input == 20  # billed 50, the three lines carry 30
    double = check_batch(
        jsonl(lines),
        jsonl(good[:3]),
        b"",
        {**batch, "request_counts": {"total": 4, "completed": 4, "failed": 0}},
    )
    assert double.double_billed == 1 and double.lost == ("c-3",)


def test_the_checker_reads_the_requests_table(tmp_path: Path) -> None:
    """One terminal row per line, and counters that agree with the rows, or it says so."""
    schema = migrations.install_script("sqlite")
    db = tmp_path / "lowtide.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(schema)
        conn.execute(
            "INSERT INTO batches (id, seq, account, endpoint, input_file_id, completion_window,"
            " status, created_at, expires_at, total, completed, input_tokens, output_tokens,"
            " input_price, output_price, discount, currency)"
            " VALUES ('batch_x', 1, 'a', '/v1/chat/completions', 'f', '24h', 'completed',"
            " 0, 0, 2, 2, 20, 2, 0, 0, 0.5, 'USD')"
        )
        for line, state in ((1, 2), (2, 1)):  # line 2 is still leased: not terminal
            result = json.dumps(_result(f"c-{line - 1}", 10)) + "\n"
            conn.execute(
                "INSERT INTO requests (batch_id, line, custom_id, byte_offset, length, state,"
                " result) VALUES ('batch_x', ?, ?, 0, 0, ?, ?)",
                (line, f"c-{line - 1}", state, result.encode()),
            )
        conn.commit()
    lines = [chat_line(f"c-{i}", "x") for i in range(2)]
    batch = {
        "id": "batch_x",
        "status": "completed",
        "request_counts": {"total": 2, "completed": 2, "failed": 0},
        "usage": {"input_tokens": 20, "output_tokens": 2},
    }
    report = check_batch(
        jsonl(lines), jsonl([_result("c-0", 10), _result("c-1", 10)]), b"", batch, db
    )
    assert "1 request rows are not terminal" in report.problems
    assert "the batch's counters disagree with its request rows" in report.problems
