"""Keys made by ``lowtide keys``, retention and the sweeper, and idempotent creates. The clock
is moved (``clock.shift``) where a rule depends on time: retention, file expiry, the lifetime
of an idempotency key."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx2 as httpx
import openai
import pytest
import time_machine
from click.testing import CliRunner, Result

from lowtide.cli.commands import cli
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import (
    ALICE,
    BOB,
    TEST_URL,
    assert_each_once,
    chat_line,
    ds_lines,
    jsonl,
)

from .conftest import (
    App,
    AppFactory,
    eventually,
    ids,
    read_results,
    wait_for,
)

DAY = 86400
FAST_SWEEP = "[retention]\nsweep_interval_seconds = 0.1\n"


async def keys_cli(*args: str, database_url: str) -> Result:
    """``lowtide keys ...`` on the server's database, as an operator runs it (on a thread:
    the command runs its own event loop)."""
    runner = CliRunner()
    argv = ["keys", *args, "--database-url", database_url]
    return await asyncio.to_thread(runner.invoke, cli, argv, catch_exceptions=False)


async def make_key(database_url: str, account: str, label: str = "tests") -> tuple[str, str, str]:
    """(the secret, its id, everything the command wrote besides the secret)."""
    made = await keys_cli(
        "create", "--account", account, "--label", label, database_url=database_url
    )
    assert made.exit_code == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("sk-lt-") and len(secret) >= 6 + 43
    key_id = made.stderr.split()[0]
    assert key_id.startswith("key_")
    return secret, key_id, made.stderr


def sqlite_bytes(app: App) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(app.data.glob("lowtide.db*")))


async def refused(app: App, key: str) -> bool:
    with pytest.raises(openai.AuthenticationError) as info:
        await app.client(key).batches.list()
    return info.value.status_code == 401


async def ds_batch(c: openai.AsyncOpenAI, **kwargs: Any) -> dict[str, Any]:
    upload = await c.files.create(file=("in.jsonl", jsonl(ds_lines(2))), purpose="batch")
    return {
        "input_file_id": upload.id,
        "endpoint": TEST_URL,
        "completion_window": "24h",
        **kwargs,
    }


async def run_ds_batch(c: openai.AsyncOpenAI, **kwargs: Any) -> Any:
    return await wait_for(c, (await c.batches.create(**await ds_batch(c, **kwargs))).id)


# --- keys --------------------------------------------------------------------------------------


async def test_a_key_made_by_the_cli_works_is_listed_and_revoked_at_once(
    lowtide_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await lowtide_app()
    url = app.sqlite_url
    secret, key_id, printed = await make_key(url, "carol", "nightly jobs")
    assert secret not in printed  # stderr names the key by its id only

    carol = app.client(secret)
    batch = await run_ds_batch(carol)
    assert batch.status == "completed"
    assert await ids(carol.batches.list()) == [batch.id]
    assert (await app.client(ALICE).batches.list()).data == []  # config keys keep working

    listed = await keys_cli("list", "--json", database_url=url)
    assert listed.exit_code == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["id"] == key_id and entry["account"] == "carol"
    assert entry["label"] == "nightly jobs" and entry["revoked_at"] is None
    assert entry["hint"] == secret[:10] + "..."
    table = await keys_cli("list", "--account", "carol", database_url=url)
    assert key_id in table.stdout and "nightly jobs" in table.stdout
    for output in (listed.stdout, table.stdout):
        assert secret not in output

    revoked = await keys_cli("revoke", key_id, database_url=url)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert await refused(app, secret)  # the very next request
    assert json.loads((await keys_cli("list", "--json", database_url=url)).stdout)[0]["revoked_at"]
    unknown = await keys_cli("revoke", "key_0000000000000000", database_url=url)
    assert unknown.exit_code == 1 and "No API key" in unknown.stderr

    assert secret.encode() not in sqlite_bytes(app)  # only its digest is stored
    assert all(secret not in record.getMessage() for record in caplog.records)


async def test_database_keys_alone_make_keys_required(lowtide_app: AppFactory) -> None:
    # No [[api_keys]] in the config: open (everyone is "default") until a key is made.
    app = await lowtide_app(toml="")
    assert (await app.client("anything-at-all").batches.list()).data == []
    secret, _, _ = await make_key(app.sqlite_url, "dave")
    assert await refused(app, "anything-at-all")
    assert (await app.client(secret).files.list()).data == []


async def test_keys_cli_refuses_a_bad_account(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    bad = await keys_cli("create", "--account", "no spaces please", database_url=app.sqlite_url)
    assert bad.exit_code == 1 and "account" in bad.stderr


@pytest.mark.postgres
async def test_a_revoked_key_is_refused_at_once_by_two_api_servers(
    pg_database: str,  # first: the database outlives the servers
    lowtide_app: AppFactory,
    upstream: FakeUpstream,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Any,
) -> None:
    shared = f'[server]\ndatabase_url = "{pg_database}"\nstorage_url = "file://{tmp_path}/files"\n'
    apps = [await lowtide_app(upstream, extra=shared) for _ in range(2)]
    secret, key_id, _ = await make_key(pg_database, "erin")
    first = apps[0].client(secret)
    upload = await first.files.create(file=("in.jsonl", jsonl(ds_lines(2))), purpose="batch")
    assert (await apps[1].client(secret).files.retrieve(upload.id)).id == upload.id

    assert (await keys_cli("revoke", key_id, database_url=pg_database)).exit_code == 0
    assert [await refused(app, secret) for app in apps] == [True, True]
    assert (await apps[1].client(ALICE).files.list()).data == []  # config keys unaffected

    dump = await _all_rows_as_text(pg_database)
    assert "erin" in dump and secret not in dump
    assert all(secret not in record.getMessage() for record in caplog.records)


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


async def test_idempotent_file_upload(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app()
    alice = app.client(ALICE)
    data = jsonl(ds_lines(3))
    key = {"Idempotency-Key": "upload-0001"}
    first = await alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    again = await alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    assert again == first  # the first response, unchanged: same id, same created_at
    assert await ids(alice.files.list()) == [first.id]  # no second file
    assert len(list((app.data / "files" / "inputs").iterdir())) == 1

    with pytest.raises(openai.ConflictError) as info:
        await alice.files.create(
            file=("in.jsonl", data + b"\n"), purpose="batch", extra_headers=key
        )
    assert "conflict" in info.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.ConflictError):
        await alice.files.create(file=("other.jsonl", data), purpose="batch", extra_headers=key)

    # Keys are per account: the same key from Bob makes Bob's own file.
    bobs = await app.client(BOB).files.create(
        file=("in.jsonl", data), purpose="batch", extra_headers=key
    )
    assert bobs.id != first.id
    # A deleted file's key still answers the first response, for 24 hours...
    await alice.files.delete(first.id)
    clock.shift(DAY - 60)
    retried = await alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    assert retried == first
    # ...and no longer after them: the same key makes a new file.
    clock.shift(120)
    fresh = await alice.files.create(file=("in.jsonl", data), purpose="batch", extra_headers=key)
    assert fresh.id != first.id
    assert await ids(alice.files.list()) == [fresh.id]


async def test_idempotent_batch_create_by_header_or_body(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app()
    alice = app.client(ALICE)
    params = await ds_batch(alice, metadata={"ds_name": "nightly", "owner": "ops"})
    key = {"Idempotency-Key": "create-0001"}
    first = await alice.batches.create(**params, extra_headers=key)
    await wait_for(alice, first.id)  # the batch moves on; a retry still gets the first answer
    again = await alice.batches.create(**params, extra_headers=key)
    assert again == first and again.status == "validating"
    # Metadata is compared as a mapping: another order is the same request.
    reordered = {**params, "metadata": {"owner": "ops", "ds_name": "nightly"}}
    assert (await alice.batches.create(**reordered, extra_headers=key)).id == first.id
    assert await ids(alice.batches.list()) == [first.id]

    with pytest.raises(openai.ConflictError) as info:
        await alice.batches.create(
            **{**params, "metadata": {"ds_name": "other"}}, extra_headers=key
        )
    assert info.value.status_code == 409 and "conflict" in info.value.body["message"]  # type: ignore[index]

    # The body's idempotency_key (extra_body, as some clients send it) works the same way.
    body_key = {"idempotency_key": "create-0002"}
    second = await alice.batches.create(**params, extra_body=body_key)
    assert second.id != first.id
    assert await alice.batches.create(**params, extra_body=body_key) == second
    header_and_body = await alice.batches.create(
        **params, extra_body=body_key, extra_headers={"Idempotency-Key": "create-0002"}
    )
    assert header_and_body == second
    with pytest.raises(openai.BadRequestError):  # two different keys at once
        await alice.batches.create(**params, extra_body=body_key, extra_headers=key)

    # Keys are per account.
    bob = app.client(BOB)
    bobs = await bob.batches.create(**await ds_batch(bob), extra_headers=key)
    assert bobs.id not in (first.id, second.id)
    assert set(await ids(alice.batches.list())) == {first.id, second.id}

    # A key lives 24 hours: after them, the same key and body make a new batch.
    clock.shift(DAY + 60)
    third = await alice.batches.create(**params, extra_headers=key)
    assert third.id not in (first.id, second.id)


async def test_idempotency_keys_are_checked(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    alice = app.client(ALICE)
    params = await ds_batch(alice)
    for bad in ("", "x" * 256):
        with pytest.raises(openai.BadRequestError):
            await alice.batches.create(**params, extra_headers={"Idempotency-Key": bad})
    with pytest.raises(openai.BadRequestError):
        await alice.batches.create(**params, extra_body={"idempotency_key": 7})
    response = await app.http.post(
        "/v1/batches",
        json=params,
        headers=httpx.Headers(
            {
                "Authorization": f"Bearer {ALICE}",
                "Idempotency-Key": "caf\u00e9".encode("latin-1"),  # type: ignore[dict-item]
            }
        ),
    )
    assert response.status_code == 400
    assert (await alice.batches.list()).data == []


# --- retention ---------------------------------------------------------------------------------


def request_rows(app: App, batch_id: str) -> int:
    return int(app.db("SELECT COUNT(*) FROM requests WHERE batch_id = ?", batch_id)[0][0])


async def test_batches_past_retention_are_hidden_and_lose_their_rows(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app(extra=FAST_SWEEP)
    alice = app.client(ALICE)
    old = await run_ds_batch(alice)
    assert request_rows(app, old.id) == 2
    clock.shift(29 * DAY)
    assert (await alice.batches.retrieve(old.id)).id == old.id  # 29 days: still kept
    clock.shift(2 * DAY)
    recent = await run_ds_batch(alice)
    with pytest.raises(openai.NotFoundError):
        await alice.batches.retrieve(old.id)
    with pytest.raises(openai.NotFoundError):
        await alice.batches.cancel(old.id)
    assert await ids(alice.batches.list()) == [recent.id]
    filtered = alice.batches.list(extra_query={"input_file_ids": old.input_file_id})
    assert await ids(filtered) == []

    await eventually(lambda: request_rows(app, old.id) == 0, "the old batch's rows are deleted")
    assert request_rows(app, recent.id) == 2


async def test_retention_period_is_configurable(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app(extra="[retention]\nbatch_days = 90\n")
    alice = app.client(ALICE)
    batch = await run_ds_batch(alice)
    clock.shift(60 * DAY)
    assert (await alice.batches.retrieve(batch.id)).id == batch.id
    assert await ids(alice.batches.list()) == [batch.id]
    # Result files the batch did not set an expiry for are kept as long as the batch.
    output = await alice.files.retrieve(batch.output_file_id or "")
    assert output.expires_at == output.created_at + 90 * DAY
    clock.shift(31 * DAY)
    with pytest.raises(openai.NotFoundError):
        await alice.batches.retrieve(batch.id)


async def test_sweeper_deletes_expired_files_and_frees_the_quota(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app(extra=FAST_SWEEP + "[account_defaults]\nmax_files = 1\n")
    alice = app.client(ALICE)
    expiring = await alice.files.create(
        file=("in.jsonl", jsonl(ds_lines(2))),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert expiring.expires_at == expiring.created_at + 3600
    blob = app.data / "files" / "inputs" / expiring.id
    assert blob.exists()
    with pytest.raises(openai.PermissionDeniedError):  # the quota is full
        await alice.files.create(file=("more.jsonl", b"{}\n"), purpose="batch")

    clock.shift(3600 + 1)
    await eventually(lambda: not blob.exists(), "the expired file's bytes are deleted")
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(expiring.id)
    # The sweeper deletes the bytes first, then its note of the deletion, in a transaction of
    # its own: on a loaded machine that comes a moment after the file is gone.
    await eventually(
        lambda: app.db("SELECT COUNT(*) FROM blob_deletions") == [(0,)], "the deletion is done"
    )
    await alice.files.create(file=("more.jsonl", b"{}\n"), purpose="batch")  # room again


async def test_output_expires_after_is_honoured_and_swept(
    lowtide_app: AppFactory, clock: time_machine.Coordinates
) -> None:
    app = await lowtide_app(extra=FAST_SWEEP)
    alice = app.client(ALICE)
    expiry = {"anchor": "created_at", "seconds": 3600}
    batch = await run_ds_batch(alice, output_expires_after=expiry)
    output = await alice.files.retrieve(batch.output_file_id)
    assert output.expires_at == output.created_at + 3600
    default = await run_ds_batch(alice)
    kept = await alice.files.retrieve(default.output_file_id)
    assert kept.expires_at == kept.created_at + 30 * DAY

    blob = app.data / "files" / "results" / batch.id / "output"
    assert blob.exists()
    clock.shift(3600 + 1)
    await eventually(lambda: not blob.exists(), "the expired output file's bytes are deleted")
    with pytest.raises(openai.NotFoundError):
        await alice.files.content(output.id)
    retrieved = await alice.batches.retrieve(batch.id)
    assert retrieved.output_file_id == output.id  # the batch stays
    assert (await alice.files.content(kept.id)).content  # the other output is kept


async def test_deleting_the_input_of_a_running_batch_does_not_break_it(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.05)
    app = await lowtide_app(upstream, max_concurrency=2, extra=FAST_SWEEP)
    alice = app.client(ALICE)
    lines = [chat_line(f"r{i}", f"question {i}") for i in range(40)]
    upload = await alice.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await alice.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await wait_for(alice, batch.id, {"in_progress"})
    assert (await alice.files.delete(upload.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(upload.id)
    assert (await alice.files.list()).data == []  # gone for the account, and off its quota...
    blob = app.data / "files" / "inputs" / upload.id
    assert blob.exists()  # ...but its bytes stay while the batch reads them

    done = await wait_for(alice, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 40
    assert_each_once(lines, *await read_results(alice, done))
    await eventually(lambda: not blob.exists(), "the deleted input's bytes go once it ended")


async def test_deleting_the_input_of_a_batch_not_yet_validated_does_not_break_it(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    # Without its engine the server leaves batches validating, so the delete surely comes
    # first; the same server then restarts with its engine on the same data.
    app = await lowtide_app(upstream, extra=FAST_SWEEP, api_only=True)
    alice = app.client(ALICE)
    lines = [chat_line(f"v{i}", f"question {i}") for i in range(20)]
    upload = await alice.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    create: dict[str, Any] = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = await alice.batches.create(input_file_id=upload.id, **create)
    assert (await alice.files.delete(upload.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await alice.files.retrieve(upload.id)
    assert (await alice.files.list()).data == []  # gone for the account at once
    late = await alice.batches.create(input_file_id=upload.id, **create)  # after the delete
    blob = app.data / "files" / "inputs" / upload.id
    assert blob.exists()

    await app.restart(api_only=False)
    done = await wait_for(alice, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 20
    assert_each_once(lines, *await read_results(alice, done))
    refused_batch = await wait_for(alice, late.id)
    assert refused_batch.status == "failed" and refused_batch.errors is not None
    assert refused_batch.errors.data[0].message.startswith(f"Cannot find file {upload.id}")
    await eventually(
        lambda: not blob.exists() and app.db("SELECT COUNT(*) FROM kept_inputs") == [(0,)],
        "the deleted input's bytes and its kept_inputs row go once no batch needs them",
    )
