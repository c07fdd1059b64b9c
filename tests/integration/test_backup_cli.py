"""``lowtide backup`` on real files: what it refuses, and the pins of backups that died.

The backup of a running server and its restore are in tests/acceptance/test_backup.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from lowtide.cli.backup import MANIFEST_NAME
from lowtide.cli.commands import cli


def data_dir(root: Path) -> Path:
    """A data directory with a small SQLite database in WAL mode and two blobs."""
    data = root / "data"
    (data / "files" / "inputs").mkdir(parents=True)
    (data / "files" / ".tmp").mkdir()
    with contextlib.closing(sqlite3.connect(data / "lowtide.db", isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("PRAGMA user_version = 7")
    (data / "files" / "inputs" / "a").write_bytes(b"alpha")
    (data / "files" / "inputs" / "b").write_bytes(b"beta")
    (data / "files" / ".tmp" / "half.part").write_bytes(b"not published")
    return data


def backup(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["backup", *args])
    return result.exit_code, result.output


def test_backup_copies_the_database_and_the_published_blobs(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    code, output = backup(str(tmp_path / "b"), "--data-dir", str(data))
    assert code == 0, output
    copy = tmp_path / "b"
    assert sorted(p.name for p in copy.iterdir()) == ["files", "lowtide-backup.json", "lowtide.db"]
    assert (copy / "files" / "inputs" / "a").read_bytes() == b"alpha"
    assert not (copy / "files" / ".tmp").exists(), "blobs being written are not copied"
    with contextlib.closing(sqlite3.connect(copy / "lowtide.db")) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    assert (manifest["files"], manifest["file_bytes"], manifest["schema_version"]) == (2, 9, 7)
    assert not list((data / "files").glob(".backup-*"))


def test_postgres_and_s3_are_refused_with_the_tool_to_use(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[server]\ndatabase_url = "postgresql://lowtide@db/lowtide"\n')
    code, output = backup(str(tmp_path / "b"), "--config", str(config))
    assert code == 1 and "pg_dump" in output
    data = data_dir(tmp_path)
    config.write_text('[server]\nstorage_url = "s3://bucket/prefix"\n')
    code, output = backup(str(tmp_path / "b"), "--config", str(config), "--data-dir", str(data))
    assert code == 1 and "versioning" in output
    assert not (tmp_path / "b").exists()


def test_a_missing_database_is_an_error_not_an_empty_backup(tmp_path: Path) -> None:
    code, output = backup(str(tmp_path / "b"), "--data-dir", str(tmp_path / "nothing"))
    assert code == 1 and "no database at" in output
    assert not (tmp_path / "b").exists()


def test_pins_of_dead_backups_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    data = data_dir(tmp_path)
    dead = data / "files" / ".backup-dead"
    live = data / "files" / ".backup-live"
    for pin in (dead, live):
        (pin / "inputs").mkdir(parents=True)
        (pin / ".lock").touch()
        os.link(data / "files" / "inputs" / "a", pin / "inputs" / "a")
    lock = os.open(live / ".lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a backup running now holds it
        code, output = backup(str(tmp_path / "b"), "--data-dir", str(data))
        assert code == 0, output
        assert not dead.exists()
        assert (live / "inputs" / "a").exists()
    finally:
        os.close(lock)
    # The pins are not blobs: the backup holds the blobs once.
    assert json.loads((tmp_path / "b" / MANIFEST_NAME).read_text())["files"] == 2
