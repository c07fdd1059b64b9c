"""The benchmarks of ``bench/`` keep working: each runs at its tiny size and prints its table.

No figure is asserted: on a shared machine a time proves nothing, and a missed target is for
the full run recorded in docs/performance.md to show, not for the test suite to fail on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lowtide.testing.children import unmeasured_env
from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]
HEADER = "| benchmark"
SCRIPTS = {
    "validate": "validate",
    "upload": "upload",
    "dispatch": "dispatch",
    "makespan": "makespan",
    "memory": "memory",
    "finalise": "finalise",
    "control_plane": "control plane",
    "fleet": "fleet",  # on the machine's PostgreSQL, as the fleet tests
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # A child of the harness: it dies with the test run, even a killed one.
    cmd = [sys.executable, *args]
    return commands.run(cmd, cwd=ROOT, timeout=240, env=unmeasured_env())


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert lines and lines[0].startswith(HEADER), stdout
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_benchmark_runs_at_tiny_size_and_prints_its_table(script: str) -> None:
    done = run(f"bench/{script}.py", "--tiny")
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert rows and all(row[0] == SCRIPTS[script] for row in rows), done.stdout
    # Every row with a target says whether it was met; the baseline is measured in the run.
    for row in rows:
        if row[5]:
            assert row[6] in ("met", "MISSED") and row[3], row


def test_all_prints_one_table_with_the_machine_and_the_upstream() -> None:
    done = run("bench/run_all.py", "--tiny", "--only", "finalise", "validate")
    assert done.returncode == 0, done.stderr
    assert "machine: nproc" in done.stdout and "command: " in done.stdout
    assert "upstream capacity, req/s/core" in done.stdout
    assert {row[0] for row in table_rows(done.stdout)} == {"finalise", "validate"}
