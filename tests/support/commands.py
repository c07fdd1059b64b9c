"""Commands run to their end, as children that die with the test run even when it is killed
(``lowtide.testing.harness.spawn``): ``subprocess.run`` would leave them running."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def base_env() -> dict[str, str]:
    """This process's environment without the user's own ``OPENAI_*`` and ``LOWTIDE_*``
    variables (they must not leak into what the tests talk to), and without colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LOWTIDE_"))}
    return {**env, "NO_COLOR": "1"}


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
