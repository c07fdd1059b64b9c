"""``lowtide run``, with no server, through llama.cpp's server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lowtide.testing.harness import spawn
from tests.realengine.conftest import MODEL, config_toml
from tests.realengine.lines import chat_lines, check_against_llama
from tests.realengine.llama_server import LlamaServer
from tests.support.batches import assert_each_once, jsonl, read_jsonl

WAIT = 120.0  # seconds: a deadline against hangs only; the run takes a few seconds


def test_run_a_file_offline(tmp_path: Path, llama: LlamaServer) -> None:
    (tmp_path / "lowtide.toml").write_text(config_toml(llama, max_attempts=2))
    lines = chat_lines(60, seed=14, prefix="r")
    invalid = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 5}
    lines.append(
        {"custom_id": "r-invalid", "method": "POST", "url": "/v1/chat/completions", "body": invalid}
    )
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    cmd = [sys.executable, "-m", "lowtide", "run", "in.jsonl", "-o", "out.jsonl"]
    cmd += ["--errors", "err.jsonl", "--config", "lowtide.toml"]
    with (tmp_path / "run.log").open("wb") as log:
        proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=_env())
    try:
        code = proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = (tmp_path / "run.log").read_text()
    assert code == 0, said

    outputs, errors = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "err.jsonl")
    assert_each_once(lines, outputs, errors)
    check_against_llama(llama, lines, outputs, errors)
    statuses = {e["custom_id"]: e["response"]["status_code"] for e in errors}
    assert statuses.pop("r-invalid") == 500
    assert statuses and set(statuses.values()) == {400}
    assert f"in.jsonl: completed, {len(outputs)} done, {len(errors)} failed" in said
    assert not (tmp_path / "out.jsonl.lowtide-state").exists()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOWTIDE_", "OPENAI_"))}
    return {**env, "NO_COLOR": "1", "COLUMNS": "200"}
