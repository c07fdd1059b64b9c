"""Commands run to their end, as children that die with the test run even when it is killed
(``lowtide.testing.harness.spawn``): ``subprocess.run`` would leave them running."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: What starts coverage in a child (``[tool.coverage.run] patch = ["subprocess"]``).
COVERAGE_START = frozenset({"COVERAGE_PROCESS_START", "COVERAGE_PROCESS_CONFIG"})


def unmeasured_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (or this process's) without coverage's start-up, for a child that is not
    measured:

    - one that runs no code of lowtide (schemathesis, moto's S3 server): coverage's tracer
      still sees every call it makes, and doubles the CPU of its start;
    - the benchmark and chaos scripts: their servers run code that other tests measure, and
      under coverage's tracer they cost a tenth of the suite's time (pytest took 499 s with
      them measured, 438 s without, coverage 93.7% and 93.5%, on a 2-core machine)."""
    return {
        k: v for k, v in (os.environ if env is None else env).items() if k not in COVERAGE_START
    }


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its end and return its output as text. ``timeout`` only turns a hang
    into a failure: the child is killed and ``subprocess.TimeoutExpired`` raised."""
    from lowtide.testing.harness import spawn

    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(
        list(cmd), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
    )
