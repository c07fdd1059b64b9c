"""The scheduling benchmarks (``bench/prefix_order.py``, ``adaptive.py``, ``budgets.py``) keep
working: each runs at its tiny size against the simulated engine and prints a well-formed table.

No figure is asserted: a tiny run on a shared machine proves nothing about speed, and the
targets are for the full runs recorded in docs/scheduling.md to show.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lowtide.testing.children import unmeasured_env
from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["benchmark", "metric", "measured", "baseline", "ratio", "target", "result"]
SCRIPTS = {"prefix_order": "prefix order", "adaptive": "adaptive", "budgets": "budgets"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # A child of the harness: it (and the engine and server it starts) dies with the test run.
    cmd = [sys.executable, *args]
    return commands.run(cmd, cwd=ROOT, timeout=280, env=unmeasured_env())


def table(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert cells and cells[0] == COLUMNS, stdout
    assert set(lines[1]) <= {"|", "-"}, stdout  # the rule under the header
    assert all(len(row) == len(COLUMNS) for row in cells), stdout
    return cells[2:]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_scheduling_benchmark_runs_at_tiny_size_and_prints_its_table(script: str) -> None:
    done = run(f"bench/{script}.py", "--tiny")
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert rows and all(row[0] == SCRIPTS[script] for row in rows), done.stdout
    targeted = [row for row in rows if row[5]]
    assert targeted, done.stdout
    for row in targeted:  # a row with a target has its same-run baseline and a verdict
        assert row[2] and row[3] and row[6] in ("met", "MISSED"), row
    assert "ran on python 3." in done.stdout


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_scheduling_benchmark_explains_its_flags(script: str) -> None:
    done = run(f"bench/{script}.py", "--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--tiny", "--lowtide-extra", "--lowtide-section"):
        assert flag in done.stdout
