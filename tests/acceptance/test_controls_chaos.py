"""The small version of ``bench/controls_chaos.py``, run as the user runs it (a subprocess
printing JSON): kills while a client pauses and resumes a batch, two caps stop theirs, and a
finished batch's failed lines are retried; every promise holds (docs/reliability.md).

A module of its own, so that it runs beside test_reliability's scripts, not after them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lowtide.testing.children import unmeasured_env
from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 540  # only turns a hang into a failure: it takes well under a minute here


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT + 60)
def test_controls_chaos_keeps_every_promise(tmp_path: Path) -> None:
    args = ["--lines", "600", "--cap-lines", "400", "--source-lines", "100"]
    args += ["--retries", "2", "--toggles", "6", "--kills", "8", "--workdir", str(tmp_path)]
    proc = commands.run(
        [sys.executable, str(ROOT / "bench" / "controls_chaos.py"), *args, "--json"],
        timeout=TIMEOUT,
        cwd=ROOT,
        env=unmeasured_env(),
    )
    assert proc.stdout, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["problems"] == [], r["problems"]
    assert r["ok"], r
    assert r["retries"]["answered"] == r["retries"]["retry_of"] == 2
    assert r["toggles"]["sent_while_paused"] == 0
