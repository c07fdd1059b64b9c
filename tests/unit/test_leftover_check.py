"""The session-end check of ``tests/conftest.py`` fails a run that leaves a process behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).parents[1] / "conftest.py"

LEAKY = """
import subprocess, sys

def test_leaves_a_child_behind():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # LEFT-BEHIND"])
"""

TIDY = """
import subprocess, sys

def test_waits_for_its_child():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


def _run_pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_it.py").write_text(test_source)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        # No plugins (schemathesis, hypothesis...): they are not needed and cost seconds.
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _alive(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_a_child_left_alive_fails_the_run_and_is_named_then_killed(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, LEAKY)
    assert result.returncode == 1, result.stdout
    assert "outlived them" in result.stdout and "LEFT-BEHIND" in result.stdout
    assert "1 passed" in result.stdout  # the test itself passed: the check failed the run
    assert not _alive("LEFT-BEHIND")


def test_a_tidy_run_passes(tmp_path: Path) -> None:
    result = _run_pytest(tmp_path, TIDY)
    assert result.returncode == 0, result.stdout
