"""The README's quickstarts work as written: a server started the README's way (``make
serve``, with ``ARGS`` for a free port and a data directory of the test's own), then the
command-line quickstart run by ``bash`` and the SDK quickstart by Python, word for word but
for the server's address."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowtide.testing.children import end
from lowtide.testing.harness import HOST, free_port, spawn
from tests.support.commands import run

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8000"


def block(heading: str, language: str) -> str:
    """The first ``language`` code block under the README's ``## heading``."""
    text = README.read_text()
    section = text[text.index(f"## {heading}\n") :]
    found = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert found is not None, f"no {language} block under '{heading}'"
    return found.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``make serve`` as the README says, with ARGS as the README says to pass options."""
    data = tmp_path_factory.mktemp("readme") / "data"
    port = free_port()
    log = data.parent / "serve.log"
    with log.open("wb") as out:
        make = spawn(
            ["make", "--no-print-directory", "serve", f"ARGS=--port {port} --data-dir {data}"],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    url = f"http://{HOST}:{port}"
    try:
        _wait_ready(url, make, log)
        yield url
    finally:
        end(make)


def _wait_ready(url: str, make: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # only turns a hang into a failure
    while time.monotonic() < deadline:
        assert make.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"make serve did not become ready:\n{log.read_text()}")


def test_the_command_line_quickstart_runs_as_written(served: str, tmp_path: Path) -> None:
    script = block("Quickstart: the command line", "sh")
    assert DEFAULT_URL in script and ". .venv/bin/activate" in script
    script = script.replace(DEFAULT_URL, served)
    # "at the repository's root": the activation line names the repository's .venv.
    script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
    done = run(["bash", "-e", "-c", script], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all("This is a test result." in row for row in rows[1:]), rows
    assert "This is a test result." in done.stdout  # the last command prints the CSV


def test_the_sdk_quickstart_runs_as_written(served: str, tmp_path: Path) -> None:
    code = block("Quickstart with the `openai` SDK", "python")
    assert f'base_url="{DEFAULT_URL}/v1"' in code
    code = code.replace(DEFAULT_URL, served)
    done = run([sys.executable, "-c", code], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("This is a test result.") == 10
    assert "completed=10" in done.stdout and "failed=0" in done.stdout
