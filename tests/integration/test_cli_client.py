"""The client commands (``lowtide batch``, ``files``, ``convert``) against a real ``lowtide
serve`` and the fake upstream, run in this process through click's ``CliRunner``: what each
prints on stdout and stderr, and its exit code, with the environment a shell would give it.

A command in this process costs milliseconds; as a process it costs over a second of CPU
(most of it importing the ``openai`` SDK). The commands as processes, with signals, terminals
and ``lowtide run``, are in tests/acceptance/test_cli.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from lowtide.cli.commands import cli
from tests.support.batches import ALICE, MODEL, chat_line, jsonl, read_jsonl, write_jsonl
from tests.support.commands import base_env
from tests.support.served import serving

FAST_POLL = ("--poll-interval", "0.1")
ANSI = "\x1b["


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def lowtide(*args: str | Path, env: dict[str, str], cwd: Path) -> Ran:
    """``lowtide *args`` run in ``cwd`` with exactly the environment ``env``, as a shell would
    start it; an exception the command does not turn into an exit code fails the test."""
    environment: dict[str, str | None] = {k: None for k in os.environ if k not in env}
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(
            cli,
            [str(a) for a in args],
            env={**environment, **env},
            prog_name="lowtide",
            catch_exceptions=False,
        )
    return Ran(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with serving(tmp_path_factory.mktemp("cli-server")) as (server, _):
        # The server's root URL: the client adds /v1 itself.
        yield {**base_env(), "LOWTIDE_BASE_URL": server.url, "LOWTIDE_API_KEY": ALICE}


def test_csv_round_trip_through_a_batch(env: dict[str, str], tmp_path: Path) -> None:
    texts = [f"question {i}" for i in range(12)]
    texts[3] = 'a "quoted", comma text'
    texts[5] = "ünïcödé 文字"
    texts[7] = "please FAIL400 this one"
    rows = [[f"row-{i}", text] for i, text in enumerate(texts)]
    with (tmp_path / "prompts.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)

    converted = lowtide(
        "convert", "csv-to-jsonl", "prompts.csv", "-o", "batch.jsonl", "--model", MODEL,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    submitted = lowtide(
        "batch", "submit", "batch.jsonl", "--wait", "-o", "output.jsonl",
        "--errors", "errors.jsonl", "--name", "round-trip", *FAST_POLL,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")
    # Piped, the progress is plain lines: no escape codes, no carriage returns.
    assert ANSI not in submitted.stderr and "\r" not in submitted.stderr
    assert f"{batch_id}: completed, 11 done, 1 failed, 12 total" in submitted.stderr
    back = lowtide(
        "convert", "jsonl-to-csv", "output.jsonl", "errors.jsonl", "--input", "batch.jsonl",
        "-o", "results.csv",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr

    with (tmp_path / "results.csv").open(newline="", encoding="utf-8") as handle:
        results = list(csv.DictReader(handle))
    assert [r["custom_id"] for r in results] == [row[0] for row in rows]
    for result, text in zip(results, texts, strict=True):
        if "FAIL400" in text:
            assert result["status_code"] == "400" and result["error_code"]
        else:
            assert result["status_code"] == "200", result
            assert result["content"] == "echo: " + text[:40]


def test_get_list_download_and_json(env: dict[str, str], tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", [chat_line(f"g-{i}", f"get {i}") for i in range(3)])
    submitted = lowtide(
        "batch", "submit", "in.jsonl", "--name", "Nightly-Get", "--wait", "--json",
        "-o", "waited.jsonl", *FAST_POLL,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    got = json.loads(submitted.stdout)  # with --json, stdout is the finished batch only
    batch_id = got["id"]
    assert got["status"] == "completed"
    assert got["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert got["metadata"]["ds_name"] == "Nightly-Get" and "cost" in got
    assert len(read_jsonl(tmp_path / "waited.jsonl")) == 3
    assert (tmp_path / "waited.errors.jsonl").read_text() == ""  # written, empty

    text = lowtide("batch", "get", batch_id, env=env, cwd=tmp_path).stdout
    assert "completed" in text and "3 done, 0 failed, 3 total" in text
    listed = lowtide("batch", "list", "--name", "nightly-get", "--json", env=env, cwd=tmp_path)
    assert [b["id"] for b in json.loads(listed.stdout)] == [batch_id]
    recent = ("--status", "completed,expired", "--since", "1h")
    table = lowtide("batch", "list", *recent, env=env, cwd=tmp_path)
    assert table.returncode == 0 and batch_id in table.stdout and "Nightly-Get" in table.stdout

    downloaded = lowtide("batch", "download", batch_id, env=env, cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    outputs = read_jsonl(tmp_path / f"{batch_id}_output.jsonl")
    assert [o["custom_id"] for o in outputs] == ["g-0", "g-1", "g-2"]
    assert (tmp_path / f"{batch_id}_errors.jsonl").read_text() == ""
    # ... which are the names that --help (and so docs/cli.md) gives.
    usage = " ".join(lowtide("batch", "download", "--help", env=env, cwd=tmp_path).stdout.split())
    assert "(default <batch id>_output.jsonl)" in usage
    assert "beside --output as <name>.errors.jsonl; without --output, <batch id>_errors" in usage


def test_failed_validation_exits_3_naming_the_line(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(jsonl([chat_line("ok", "fine")]) + b"{not json\n")
    result = lowtide("batch", "submit", str(path), "--wait", *FAST_POLL, env=env, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "line 2: invalid_json_line" in result.stderr
    assert not list(tmp_path.glob("*output.jsonl"))  # no results, so no result files


def test_a_missing_key_and_a_wrong_key_are_told_apart(env: dict[str, str], tmp_path: Path) -> None:
    no_key = {k: v for k, v in env.items() if k != "LOWTIDE_API_KEY"}
    missing = lowtide("batch", "list", env=no_key, cwd=tmp_path)
    assert missing.returncode == 1
    assert "needs an API key: pass --api-key or set LOWTIDE_API_KEY" in missing.stderr
    wrong = lowtide("batch", "list", env={**env, "LOWTIDE_API_KEY": "sk-wrong-key"}, cwd=tmp_path)
    assert wrong.returncode == 1 and "401: Incorrect API key provided." in wrong.stderr


def test_a_refused_batch_leaves_no_file_behind(env: dict[str, str], tmp_path: Path) -> None:
    def file_ids() -> set[str]:
        listed = lowtide("files", "list", "--json", env=env, cwd=tmp_path)
        return {f["id"] for f in json.loads(listed.stdout)}

    write_jsonl(tmp_path / "in.jsonl", [chat_line("r-1", "refused")])
    before = file_ids()
    short = lowtide("batch", "submit", "in.jsonl", "--window", "2h", env=env, cwd=tmp_path)
    assert short.returncode == 2, short.stderr  # refused before anything was uploaded
    assert "--window" in short.stderr and "completion_window" in short.stderr
    bad = lowtide("batch", "submit", "in.jsonl", "--endpoint", "/v1/nope", env=env, cwd=tmp_path)
    assert bad.returncode == 1 and "400: Invalid value: '/v1/nope'" in bad.stderr
    assert "its uploaded file file-batch-" in bad.stderr and "was deleted" in bad.stderr
    assert file_ids() == before


def test_files_commands(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "up.jsonl", [chat_line("f-1", "file")])
    uploaded = lowtide("files", "upload", path, "--json", env=env, cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    record = json.loads(uploaded.stdout)
    file_id = record["id"]
    assert record["purpose"] == "batch" and record["bytes"] == path.stat().st_size

    table = lowtide("files", "list", "--purpose", "batch", env=env, cwd=tmp_path).stdout
    assert file_id in table and "up.jsonl" in table
    got = json.loads(lowtide("files", "get", file_id, "--json", env=env, cwd=tmp_path).stdout)
    assert got["filename"] == "up.jsonl"
    to_stdout = lowtide("files", "download", file_id, env=env, cwd=tmp_path)
    assert to_stdout.stdout == path.read_text()

    deleted = lowtide("files", "delete", file_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(deleted.stdout)["deleted"] is True
    gone = lowtide("files", "get", file_id, env=env, cwd=tmp_path)
    assert gone.returncode == 1 and "404" in gone.stderr and "Traceback" not in gone.stderr


def test_errors_are_one_line_and_exit_1(env: dict[str, str], tmp_path: Path) -> None:
    wrong_key = {**env, "LOWTIDE_API_KEY": "sk-wrong-key-000000"}
    denied = lowtide("batch", "list", env=wrong_key, cwd=tmp_path)
    assert denied.returncode == 1 and "401" in denied.stderr and "Traceback" not in denied.stderr
    nowhere = {**base_env(), "LOWTIDE_BASE_URL": "http://127.0.0.1:9"}
    unreachable = lowtide("files", "list", env=nowhere, cwd=tmp_path)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr
    # OPENAI_* is the fallback when no LOWTIDE_* variable is set.
    fallback = {**base_env(), "OPENAI_BASE_URL": env["LOWTIDE_BASE_URL"] + "/v1"}
    fallback["OPENAI_API_KEY"] = ALICE
    assert lowtide("batch", "list", "--json", env=fallback, cwd=tmp_path).returncode == 0
