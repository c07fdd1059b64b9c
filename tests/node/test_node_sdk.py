"""The official ``openai`` package for Node.js against ``lowtide serve``.

``batches.mjs`` runs the calls a Node user makes (upload, create, retrieve, list with a
filter, cancel, download, a wrong key) and prints what it saw as JSON; this test starts
lowtide and the fake upstream, runs it with ``node`` and checks that JSON. The package is
pinned in ``package-lock.json`` and installed by ``scripts/ensure-node-sdk`` (``npm ci``,
run by ``make install-dev``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.harness import Lowtide, spawn
from tests.support.batches import ALICE, MODEL

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "batches.mjs"
INSTALLED = HERE / "node_modules" / ".lowtide-installed"  # written by scripts/ensure-node-sdk
WAIT = 120.0  # seconds: a deadline against hangs only; the script takes a few seconds


def node() -> str:
    path = shutil.which("node")
    reason = None
    if path is None:
        reason = "node is not installed (Node.js 20 or later; Debian: apt-get install nodejs npm)"
    elif not INSTALLED.exists():
        reason = f"{HERE / 'node_modules'} is not installed: run scripts/ensure-node-sdk"
    if reason is not None:
        # On CI a missing Node or package is a broken set-up, not a reason to skip.
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert path is not None
    return path


def run_script(server_base_url: str, workdir: Path) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOWTIDE_", "OPENAI_"))}
    env |= {"LOWTIDE_BASE_URL": server_base_url, "LOWTIDE_API_KEY": ALICE, "LOWTIDE_MODEL": MODEL}
    out, err = workdir / "node.out", workdir / "node.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = spawn([node(), str(SCRIPT)], stdout=stdout, stderr=stderr, env=env, cwd=HERE)
    try:
        code = proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    said = err.read_text()
    text = out.read_text()
    return code, (json.loads(text) if code == 0 else {}), said


def test_the_node_sdk_drives_lowtide(lowtide: Lowtide, tmp_path: Path) -> None:
    code, seen, stderr = run_script(lowtide.base_url, tmp_path)
    assert code == 0, stderr

    assert seen["file"]["purpose"] == "batch" and seen["file"]["filename"] == "node-input.jsonl"
    assert seen["file"]["id"].startswith("file-") and seen["file"]["bytes"] > 0
    tag = seen["created"]["metadata"]["ds_name"]
    assert tag.startswith("node-sdk-")

    done = seen["done"]
    assert done["id"] == seen["created"]["id"] and done["status"] == "completed"
    assert done["request_counts"] == {"total": 7, "completed": 6, "failed": 1}
    outputs, errors = seen["output_lines"], seen["error_lines"]
    assert sorted(o["custom_id"] for o in outputs) == [f"n{i}" for i in range(6)]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in outputs)
    assert [e["custom_id"] for e in errors] == ["n-bad"]
    assert errors[0]["response"]["status_code"] == 400
    assert errors[0]["error"]["code"] == "context_length_exceeded"
    bodies = [o["response"]["body"] for o in outputs]
    assert done["usage"]["input_tokens"] == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert done["usage"]["output_tokens"] == sum(b["usage"]["completion_tokens"] for b in bodies)

    assert seen["cancel_answer"] == "cancelling"
    cancelled = seen["cancelled"]
    assert cancelled["status"] == "cancelled"
    counts = cancelled["request_counts"]
    assert counts["total"] == 60 and counts["completed"] < 60, cancelled
    assert counts["completed"] + counts["failed"] == 60
    cancelled_lines = seen["cancelled_error_lines"]
    assert len(cancelled_lines) == counts["failed"] > 0
    assert {e["error"]["code"] for e in cancelled_lines} == {"batch_cancelled"}

    # The filters, read through the SDK's pagination one batch a page.
    assert seen["listed_completed"] == [done["id"]]
    assert seen["listed_cancelled"] == [cancelled["id"]]
    assert sorted(seen["listed_all"]) == sorted([done["id"], cancelled["id"]])

    assert seen["wrong_key"] == {
        "thrown": True,
        "authentication_error": True,
        "status": 401,
        "code": "invalid_api_key",
        "type": "invalid_request_error",
    }


def test_a_failing_call_makes_the_script_exit_1(tmp_path: Path) -> None:
    """The script's own failure path: nothing listens at the URL it is given."""
    workdir = tmp_path / "nowhere"
    workdir.mkdir()
    code, _, stderr = run_script("http://127.0.0.1:9/v1", workdir)
    assert code == 1 and "Connection error" in stderr
