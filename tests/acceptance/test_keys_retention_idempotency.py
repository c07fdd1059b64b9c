"""Keys made by ``lowtide keys``, retention and the sweeper, and idempotent creates: the real
``lowtide serve`` process (one, or two on one PostgreSQL database), the ``lowtide`` command
line and the ``openai`` SDK."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx2 as httpx
import openai
import pytest

from lowtide.testing import postgres as pg
from lowtide.testing.harness import Lowtide, Upstream

from .conftest import (
    ALICE,
    BOB,
    assert_each_once,
    chat_line,
    client,
    jsonl,
    read_results,
    wait_for,
)
from .test_postgres_mode import database, postgres_toml, start

__all__ = ["database"]  # a fixture, imported for the PostgreSQL test

TEST_URL = "/v1/chat/ds-test"
FAST_SWEEP = "[retention]\nsweep_interval_seconds = 0.2\n"


def ds_lines(n: int = 2) -> list[dict[str, Any]]:
    return [chat_line(f"t{i}", "x", model="batch-test-model", url=TEST_URL) for i in range(n)]


def keys_cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """``lowtide keys ...`` on the server's database, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "lowtide", "keys", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LOWTIDE_TESTING": "1"},
        check=False,
    )


def make_key(database_url: str, account: str, label: str = "tests") -> tuple[str, str, str]:
    """(the secret, its id, everything the command wrote besides the secret)."""
    made = keys_cli("create", "--account", account, "--label", label, database_url=database_url)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-lt-") and len(secret) >= 6 + 43
    key_id = made.stderr.split()[0]
    assert key_id.startswith("key_")
    return secret, key_id, made.stderr


def sqlite_url(server: Lowtide) -> str:
    return f"sqlite:///{server.workdir / 'data' / 'lowtide.db'}"


def db_execute(server: Lowtide, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read or change the server's SQLite database beside it (WAL: safe while it runs)."""
    conn = sqlite3.connect(server.workdir / "data" / "lowtide.db", timeout=10)
    try:
        with conn:
            return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def sqlite_bytes(server: Lowtide) -> bytes:
    data = server.workdir / "data"
    return b"".join(p.read_bytes() for p in sorted(data.glob("lowtide.db*")))


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true: {what}")
        time.sleep(0.1)


def refused(server: Lowtide, key: str) -> bool:
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, key).batches.list()
    return info.value.status_code == 401


# --- keys --------------------------------------------------------------------------------------


def test_a_key_made_by_the_cli_works_is_listed_and_revoked_at_once(make_server):
    server = make_server()
    url = sqlite_url(server)
    secret, key_id, printed = make_key(url, "carol", "nightly jobs")
    assert secret not in printed  # stderr names the key by its id only

    carol = client(server, secret)
    batch = wait_for(carol, carol.batches.create(**_ds_batch(carol)).id)
    assert batch.status == "completed"
    assert [b.id for b in carol.batches.list()] == [batch.id]
    assert client(server, ALICE).batches.list().data == []  # the config keys keep working

    listed = keys_cli("list", "--json", database_url=url)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["id"] == key_id and entry["account"] == "carol"
    assert entry["label"] == "nightly jobs" and entry["revoked_at"] is None
    assert entry["hint"] == secret[:10] + "..."
    table = keys_cli("list", "--account", "carol", database_url=url)
    assert key_id in table.stdout and "nightly jobs" in table.stdout
    for output in (listed.stdout, table.stdout):
        assert secret not in output

    revoked = keys_cli("revoke", key_id, database_url=url)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert refused(server, secret)  # the very next request
    assert json.loads(keys_cli("list", "--json", database_url=url).stdout)[0]["revoked_at"]
    unknown = keys_cli("revoke", "key_0000000000000000", database_url=url)
    assert unknown.returncode == 1 and "No API key" in unknown.stderr

    assert secret.encode() not in sqlite_bytes(server)  # only its digest is stored
    assert secret not in server.log()


def test_database_keys_alone_make_keys_required(tmp_path: Path):
    # No [[api_keys]] in the config: open (everyone is "default") until a key is made.
    workdir = tmp_path / "open"
    workdir.mkdir()
    server = Lowtide(workdir, "")
    server.start()
    try:
        assert client(server, "anything-at-all").batches.list().data == []
        secret, _, _ = make_key(sqlite_url(server), "dave")
        assert refused(server, "anything-at-all")
        assert client(server, secret).files.list().data == []
    finally:
        server.stop()


def test_keys_cli_refuses_a_bad_account(make_server):
    server = make_server()
    bad = keys_cli("create", "--account", "no spaces please", database_url=sqlite_url(server))
    assert bad.returncode == 1 and "account" in bad.stderr


@pytest.mark.postgres
def test_a_revoked_key_is_refused_at_once_by_two_api_processes(
    upstream: Upstream, database: str, tmp_path: Path
):
    toml = postgres_toml(upstream, database, files=tmp_path / "files")
    servers = [start(tmp_path, f"api{i}", toml) for i in range(2)]
    try:
        secret, key_id, _ = make_key(database, "erin")
        first = client(servers[0], secret)
        upload = first.files.create(file=("in.jsonl", jsonl(ds_lines())), purpose="batch")
        assert client(servers[1], secret).files.retrieve(upload.id).id == upload.id

        assert keys_cli("revoke", key_id, database_url=database).returncode == 0
        assert all(refused(server, secret) for server in servers)
        assert client(servers[1], ALICE).files.list().data == []  # config keys unaffected

        dump = pg.run_sync(_all_rows_as_text(database))
        assert "erin" in dump and secret not in dump
        assert all(secret not in server.log() for server in servers)
    finally:
        for server in servers:
            server.stop()


async def _all_rows_as_text(url: str) -> str:
    """Every row of every table of the database, as text."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        parts = []
        for (table,) in tables:
            rows = await conn.fetch(f'SELECT t::text FROM "{table}" t')
            parts.extend(r[0] for r in rows)
        return "\n".join(parts)
    finally:
        await conn.close()


# --- idempotency -------------------------------------------------------------------------------


def _ds_batch(c: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    upload = c.files.create(file=("in.jsonl", jsonl(ds_lines())), purpose="batch")
    return {
        "input_file_id": upload.id,
        "endpoint": TEST_URL,
        "completion_window": "24h",
        **kwargs,
    }


def test_idempotent_file_upload(make_server):
    server = make_server()
    alice = client(server, ALICE)
    data = jsonl(ds_lines(3))
    key = {"Idempotency-Key": "upload-0001"}
    first = alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    again = alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    assert again == first  # the first response, unchanged: same id, same created_at
    assert [f.id for f in alice.files.list()] == [first.id]  # no second file
    assert len(list((server.workdir / "data" / "files" / "inputs").iterdir())) == 1

    with pytest.raises(openai.ConflictError) as info:
        alice.files.create(file=("in.jsonl", data + b"\n"), purpose="batch", extra_headers=key)
    assert "conflict" in info.value.body["message"]
    with pytest.raises(openai.ConflictError):
        alice.files.create(file=("other.jsonl", data), purpose="batch", extra_headers=key)

    # Keys are per account: the same key from Bob makes Bob's own file.
    bobs = client(server, BOB).files.create(
        file=("in.jsonl", data), purpose="batch", extra_headers=key
    )
    assert bobs.id != first.id
    # A deleted file's key still answers the first response (for 24 hours).
    alice.files.delete(first.id)
    assert alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key) == first


def test_idempotent_batch_create_by_header_or_body(make_server):
    server = make_server()
    alice = client(server, ALICE)
    params = _ds_batch(alice, metadata={"ds_name": "nightly", "owner": "ops"})
    key = {"Idempotency-Key": "create-0001"}
    first = alice.batches.create(**params, extra_headers=key)
    wait_for(alice, first.id)  # the batch moves on; a retry still gets the first answer
    again = alice.batches.create(**params, extra_headers=key)
    assert again == first and again.status == "validating"
    # Metadata is compared as a mapping: another order is the same request.
    reordered = {**params, "metadata": {"owner": "ops", "ds_name": "nightly"}}
    assert alice.batches.create(**reordered, extra_headers=key).id == first.id
    assert [b.id for b in alice.batches.list()] == [first.id]

    with pytest.raises(openai.ConflictError) as info:
        alice.batches.create(**{**params, "metadata": {"ds_name": "other"}}, extra_headers=key)
    assert info.value.status_code == 409 and "conflict" in info.value.body["message"]

    # The body's idempotency_key (extra_body, as some clients send it) works the same way.
    body_key = {"idempotency_key": "create-0002"}
    second = alice.batches.create(**params, extra_body=body_key)
    assert second.id != first.id
    assert alice.batches.create(**params, extra_body=body_key) == second
    header_and_body = alice.batches.create(
        **params, extra_body=body_key, extra_headers={"Idempotency-Key": "create-0002"}
    )
    assert header_and_body == second
    with pytest.raises(openai.BadRequestError):  # two different keys at once
        alice.batches.create(**params, extra_body=body_key, extra_headers=key)

    # Keys are per account.
    bob = client(server, BOB)
    bobs = bob.batches.create(**_ds_batch(bob), extra_headers=key)
    assert bobs.id not in (first.id, second.id)
    assert {b.id for b in alice.batches.list()} == {first.id, second.id}


def test_idempotency_keys_are_checked(make_server):
    server = make_server()
    alice = client(server, ALICE)
    params = _ds_batch(alice)
    for bad in ("", "x" * 256):
        with pytest.raises(openai.BadRequestError):
            alice.batches.create(**params, extra_headers={"Idempotency-Key": bad})
    with pytest.raises(openai.BadRequestError):
        alice.batches.create(**params, extra_body={"idempotency_key": 7})
    response = httpx.post(
        server.base_url + "/batches",
        json=params,
        headers={
            "Authorization": f"Bearer {ALICE}",
            "Idempotency-Key": "caf\u00e9".encode("latin-1"),
        },
    )
    assert response.status_code == 400
    assert alice.batches.list().data == []


# --- retention ---------------------------------------------------------------------------------


def test_batches_past_retention_are_hidden_and_lose_their_rows(make_server):
    server = make_server(extra=FAST_SWEEP)
    alice = client(server, ALICE)
    old = wait_for(alice, alice.batches.create(**_ds_batch(alice)).id)
    recent = wait_for(alice, alice.batches.create(**_ds_batch(alice)).id)
    assert db_execute(server, "SELECT COUNT(*) FROM requests WHERE batch_id = ?", old.id) == [(2,)]
    db_execute(
        server,
        "UPDATE batches SET created_at = created_at - 31 * 86400 WHERE id = ?",
        old.id,
    )
    with pytest.raises(openai.NotFoundError):
        alice.batches.retrieve(old.id)
    with pytest.raises(openai.NotFoundError):
        alice.batches.cancel(old.id)
    assert [b.id for b in alice.batches.list()] == [recent.id]
    assert [
        b.id for b in alice.batches.list(extra_query={"input_file_ids": old.input_file_id})
    ] == []

    def swept() -> bool:
        return db_execute(server, "SELECT COUNT(*) FROM requests WHERE batch_id = ?", old.id) == [
            (0,)
        ]

    eventually(swept, "the old batch's request rows are deleted")
    count = db_execute(server, "SELECT COUNT(*) FROM requests WHERE batch_id = ?", recent.id)
    assert count == [(2,)]


def test_retention_period_is_configurable(make_server):
    server = make_server(extra="[retention]\nbatch_days = 90\n")
    alice = client(server, ALICE)
    batch = wait_for(alice, alice.batches.create(**_ds_batch(alice)).id)
    db_execute(server, "UPDATE batches SET created_at = created_at - 60 * 86400")
    assert alice.batches.retrieve(batch.id).id == batch.id
    assert [b.id for b in alice.batches.list()] == [batch.id]
    # Result files the batch did not set an expiry for are kept as long as the batch.
    output = alice.files.retrieve(batch.output_file_id or "")
    assert output.expires_at == output.created_at + 90 * 86400


def test_sweeper_deletes_expired_files_and_frees_the_quota(make_server):
    server = make_server(extra=FAST_SWEEP + "[account_defaults]\nmax_files = 1\n")
    alice = client(server, ALICE)
    expiring = alice.files.create(
        file=("in.jsonl", jsonl(ds_lines())),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert expiring.expires_at == expiring.created_at + 3600
    blob = server.workdir / "data" / "files" / "inputs" / expiring.id
    assert blob.exists()
    with pytest.raises(openai.PermissionDeniedError):  # the quota is full
        alice.files.create(file=("more.jsonl", b"{}\n"), purpose="batch")

    db_execute(
        server, "UPDATE files SET expires_at = ? WHERE id = ?", int(time.time()) - 1, expiring.id
    )
    eventually(lambda: not blob.exists(), "the expired file's bytes are deleted")
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(expiring.id)
    assert db_execute(server, "SELECT COUNT(*) FROM blob_deletions") == [(0,)]
    alice.files.create(file=("more.jsonl", b"{}\n"), purpose="batch")  # room again


def test_output_expires_after_is_honoured_and_swept(make_server):
    server = make_server(extra=FAST_SWEEP)
    alice = client(server, ALICE)
    expiry = {"anchor": "created_at", "seconds": 3600}
    batch = wait_for(
        alice, alice.batches.create(**_ds_batch(alice, output_expires_after=expiry)).id
    )
    output = alice.files.retrieve(batch.output_file_id)
    assert output.expires_at == output.created_at + 3600
    default = wait_for(alice, alice.batches.create(**_ds_batch(alice)).id)
    kept = alice.files.retrieve(default.output_file_id)
    assert kept.expires_at == kept.created_at + 30 * 86400

    blob = server.workdir / "data" / "files" / "results" / batch.id / "output"
    assert blob.exists()
    db_execute(server, "UPDATE files SET expires_at = 1 WHERE id = ?", output.id)
    eventually(lambda: not blob.exists(), "the expired output file's bytes are deleted")
    with pytest.raises(openai.NotFoundError):
        alice.files.content(output.id)
    assert alice.batches.retrieve(batch.id).output_file_id == output.id  # the batch stays


def test_deleting_the_input_of_a_running_batch_does_not_break_it(make_server, upstream):
    upstream.configure(latency=0.1)
    server = make_server(upstream, max_concurrency=2, extra=FAST_SWEEP)
    alice = client(server, ALICE)
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(60)]
    upload = alice.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = alice.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(alice, batch.id, {"in_progress"})
    assert alice.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(upload.id)
    assert alice.files.list().data == []  # gone for the account, and off its quota...
    blob = server.workdir / "data" / "files" / "inputs" / upload.id
    assert blob.exists()  # ...but its bytes stay while the batch reads them

    done = wait_for(alice, batch.id, timeout=120)
    assert done.status == "completed" and done.request_counts.completed == 60
    assert_each_once(lines, *read_results(alice, done))
    eventually(lambda: not blob.exists(), "the deleted input's bytes go once the batch ended")


def test_deleting_the_input_of_a_batch_not_yet_validated_does_not_break_it(make_server, upstream):
    # Without its engine (--api-only) the server leaves batches validating, so the delete
    # surely comes first; the same server then restarts with its engine on the same data.
    server = make_server(upstream, extra=FAST_SWEEP, extra_args=("--api-only",))
    alice = client(server, ALICE)
    lines = [chat_line(f"v{i}", f"question {i}") for i in range(20)]
    upload = alice.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    create = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = alice.batches.create(input_file_id=upload.id, **create)
    assert alice.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(upload.id)
    assert alice.files.list().data == []  # gone for the account at once
    late = alice.batches.create(input_file_id=upload.id, **create)  # made after the delete
    blob = server.workdir / "data" / "files" / "inputs" / upload.id
    assert blob.exists()

    server.stop()
    server.extra_args = []
    server.start()
    done = wait_for(alice, batch.id, timeout=120)
    assert done.status == "completed" and done.request_counts.completed == 20
    assert_each_once(lines, *read_results(alice, done))
    refused = wait_for(alice, late.id)
    assert refused.status == "failed" and refused.errors is not None
    assert refused.errors.data[0].message.startswith(f"Cannot find file {upload.id}")
    eventually(lambda: not blob.exists(), "the deleted input's bytes go once no batch needs them")
    assert db_execute(server, "SELECT COUNT(*) FROM kept_inputs") == [(0,)]
