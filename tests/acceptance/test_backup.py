"""``lowtide backup`` of a running server, restored into a new data directory.

The restore is what docs/operations.md tells an operator to do: stop (here: a new server),
put the backup in place of the data directory, start. Every file and batch of the backup
must then be there, with bytes that download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from lowtide.cli.backup import MANIFEST_NAME, Backup, Sources
from lowtide.testing.harness import Lowtide, Upstream
from tests.acceptance.conftest import (
    ServerFactory,
    assert_each_once,
    chat_line,
    client,
    read_results,
    submit,
    wait_for,
)


@contextmanager
def restored(server: Lowtide, backup: Path, workdir: Path) -> Iterator[Lowtide]:
    """A server on a copy of ``backup`` as its data directory, with ``server``'s config."""
    workdir.mkdir()
    shutil.copytree(backup, workdir / "data")
    other = Lowtide(workdir, server.config_path.read_text())
    try:
        other.start()
        yield other
    finally:
        other.stop()


def run_backup(server: Lowtide, dest: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "lowtide", "backup", str(dest)]
    cmd += ["--config", str(server.config_path), "--data-dir", str(server.workdir / "data")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def all_files(c: openai.OpenAI) -> list[Any]:
    return list(c.files.list(limit=10_000))


def test_backup_of_a_running_server_restores_files_and_batches(
    make_server: ServerFactory, upstream: Upstream, tmp_path: Path
) -> None:
    server = make_server(upstream, max_concurrency=4)
    c = client(server)
    kept = c.files.create(file=("notes.jsonl", b'{"note": 1}\n'), purpose="batch")
    gone = c.files.create(file=("gone.jsonl", b'{"note": 2}\n'), purpose="batch")
    c.files.delete(gone.id)
    done_lines = [chat_line(f"d{i}", f"done {i}") for i in range(20)]
    done = wait_for(c, submit(c, done_lines).id)
    assert done.status == "completed"
    done_output = c.files.content(done.output_file_id).content
    # The upstream answers 429 + Retry-After until told otherwise: the second batch is running
    # (its lines wait, no attempt spent) all through the backup, however slow the machine is.
    upstream.configure(storm_seconds=3600)
    running_lines = [chat_line(f"r{i}", f"running {i}") for i in range(40)]
    running = submit(c, running_lines)
    wait_for(c, running.id, {"in_progress"})

    # Files come and go while the backup runs: whatever the snapshot holds must have bytes.
    stop = threading.Event()
    churned: list[str] = []

    def churn() -> None:
        for i in range(200):
            if stop.is_set():
                return
            made = c.files.create(file=(f"churn{i}.jsonl", b'{"n": %d}\n' % i), purpose="batch")
            churned.append(made.id)
            c.files.delete(made.id)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        done_backup = run_backup(server, tmp_path / "backup")
    finally:
        stop.set()
        churner.join(60)
    assert done_backup.returncode == 0, done_backup.stderr
    assert "backed up" in done_backup.stdout
    assert churned, "no file was uploaded during the backup"
    manifest = json.loads((tmp_path / "backup" / MANIFEST_NAME).read_text())
    assert manifest["files"] >= 3  # kept, the finished batch's input and output at least
    assert c.batches.retrieve(running.id).status == "in_progress"
    upstream.configure(storm_seconds=0)

    with restored(server, tmp_path / "backup", tmp_path / "restored") as other:
        r = client(other)
        files = {f.id: f for f in all_files(r)}
        assert kept.id in files and gone.id not in files
        assert r.files.content(kept.id).content == b'{"note": 1}\n'
        for file_id in files:  # every file of the snapshot, churned ones too, has its bytes
            assert r.files.content(file_id).content is not None
        again = r.batches.retrieve(done.id)
        assert again.status == "completed"
        assert r.files.content(again.output_file_id).content == done_output
        # The batch that was running goes on from where the snapshot had it.
        finished = wait_for(r, running.id, timeout=120)
        assert finished.status == "completed"
        outputs, errors = read_results(r, finished)
        assert_each_once(running_lines, outputs, errors)
        assert errors == []

    # The server that was backed up was not disturbed.
    assert wait_for(c, running.id, timeout=120).status == "completed"


def test_files_deleted_after_the_snapshot_keep_their_bytes_in_the_backup(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """The order that makes the backup consistent, step by step: bytes published before the
    first pin and bytes published between it and the snapshot are both in the backup, though
    the server deletes them (row, then bytes) right after the snapshot and before any byte is
    copied. A backup that copied the files after the snapshot would miss both."""
    server = make_server()
    c = client(server)
    data = server.workdir / "data"
    sources = Sources(data / "lowtide.db", data / "files")
    early = c.files.create(file=("early.jsonl", b'{"early": 1}\n'), purpose="batch")
    with Backup(sources, tmp_path / "backup") as backup:
        backup.pin_published()
        late = c.files.create(file=("late.jsonl", b'{"late": 1}\n'), purpose="batch")
        with backup.snapshot() as (reader, paused):
            c.files.delete(early.id)
            c.files.delete(late.id)
            assert {f.id for f in all_files(c)}.isdisjoint({early.id, late.id})
            backup.finish(reader, paused)

    with restored(server, tmp_path / "backup", tmp_path / "restored") as other:
        r = client(other)
        assert r.files.content(early.id).content == b'{"early": 1}\n'
        assert r.files.content(late.id).content == b'{"late": 1}\n'
    assert not list((data / "files").glob(".backup-*")), "the pin was left behind"


@pytest.mark.measure_children
def test_backup_into_a_non_empty_directory_is_refused(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server()
    dest = tmp_path / "occupied"
    dest.mkdir()
    (dest / "something").write_text("keep me")
    result = run_backup(server, dest)
    assert result.returncode == 1
    assert "not an empty directory" in result.stderr
    assert (dest / "something").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".occupied")] == []
