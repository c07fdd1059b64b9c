"""The ``Store`` contract for keys, idempotency and retention, on SQLite and PostgreSQL alike.

Times are passed explicitly, so nothing sleeps: a key "lapses" or a file "expires" by asking
with a later ``now``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from lowtide.domain.accounts import ApiKeyRecord, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.records import BatchFilter, FileRecord
from lowtide.domain.status import Status
from lowtide.service.keys import digest
from lowtide.store import Store, open_store

from .test_store import batch_rec, file_rec, results, started

NOW = int(time.time())
DAY = 86400


def key_rec(key_id: str, account: str = "alice", **changes: object) -> ApiKeyRecord:
    fields: dict[str, object] = {"hint": "sk-lt-abcd...", "created_at": NOW, "label": None}
    fields |= changes
    return ApiKeyRecord(id=key_id, account=account, **fields)  # type: ignore[arg-type]


def claim(
    key: str = "k1",
    fingerprint: str = "fp-1",
    *,
    account: str = "alice",
    kind: str = "batch",
    response: str = '{"id":"first"}',
    now: int = NOW,
) -> IdempotencyClaim:
    return IdempotencyClaim(account, kind, key, fingerprint, response, now, now - DAY)


async def finished(store: Store, batch_id: str, n: int = 3, **changes: object) -> None:
    """A batch run through to a terminal status (cancelled: the shortest real path)."""
    await started(store, batch_id, n=n, **changes)
    assert await store.request_cancel("alice", batch_id, NOW) is not None
    assert await store.claim_finalization(batch_id, "fin", time.time(), 60.0) is not None
    assert await store.finish_finalization(
        batch_id, "fin", Status.CANCELLED, [], "batch_cancelled", "cancelled", NOW
    )


# --- API keys ----------------------------------------------------------------------------------


async def test_api_keys_by_digest_list_and_revoke(store: Store) -> None:
    assert not await store.has_api_keys()
    await store.create_api_key(key_rec("key_a1", label="nightly"), digest("secret-a1"))
    await store.create_api_key(key_rec("key_b1", "bob", created_at=NOW + 1), digest("secret-b1"))
    assert await store.has_api_keys()
    assert await store.find_api_key(digest("secret-a1")) == "alice"
    assert await store.find_api_key(digest("secret-b1")) == "bob"
    assert await store.find_api_key(digest("secret-zz")) is None

    assert [k.id for k in await store.list_api_keys(None)] == ["key_a1", "key_b1"]
    assert await store.list_api_keys("alice") == [key_rec("key_a1", label="nightly")]

    revoked = await store.revoke_api_key("key_a1", NOW + 5)
    assert revoked == key_rec("key_a1", label="nightly", revoked_at=NOW + 5)
    assert await store.find_api_key(digest("secret-a1")) is None  # refused from now on
    assert await store.find_api_key(digest("secret-b1")) == "bob"
    again = await store.revoke_api_key("key_a1", NOW + 9)  # revoking twice keeps the first time
    assert again is not None and again.revoked_at == NOW + 5
    assert await store.revoke_api_key("key_nope", NOW) is None
    assert await store.has_api_keys()  # revoked keys still count: keys stay required


async def test_the_same_secret_cannot_be_stored_twice(store: Store) -> None:
    await store.create_api_key(key_rec("key_1"), digest("same"))
    with pytest.raises(Exception, match=r"(?i)unique"):
        await store.create_api_key(key_rec("key_2"), digest("same"))


# --- idempotency -------------------------------------------------------------------------------


async def test_idempotent_create_batch_records_the_key_with_the_batch(store: Store) -> None:
    assert await store.create_batch(batch_rec("batch_first"), claim()) is None
    held = IdempotencyRecord("fp-1", '{"id":"first"}', NOW)
    assert await store.find_idempotency("alice", "batch", "k1", NOW - DAY) == held

    # The same key again: nothing is inserted, the recorded key comes back (whatever the
    # fingerprint: comparing it is the service's business).
    for fingerprint in ("fp-1", "fp-other"):
        got = await store.create_batch(batch_rec("batch_second"), claim(fingerprint=fingerprint))
        assert got == held
    assert await store.get_batch(None, "batch_second") is None

    # Scoped by account and by kind.
    assert await store.create_batch(batch_rec("batch_bob", "bob"), claim(account="bob")) is None
    assert await store.find_idempotency("alice", "file", "k1", NOW - DAY) is None


async def test_idempotent_create_file(store: Store) -> None:
    first = claim(kind="file", response='{"id":"file-batch-1"}')
    assert await store.create_file(file_rec("file-batch-1"), first) is None
    held = await store.create_file(file_rec("file-batch-2"), claim(kind="file"))
    assert held == IdempotencyRecord("fp-1", '{"id":"file-batch-1"}', NOW)
    assert await store.get_file(None, "file-batch-2") is None
    assert await store.file_usage("alice") == (1, 100)


async def test_a_lapsed_key_is_replaced_then_forgotten(store: Store) -> None:
    old = NOW - 2 * DAY
    assert await store.create_batch(batch_rec("batch_old"), claim(now=old)) is None
    assert await store.find_idempotency("alice", "batch", "k1", NOW - DAY) is None  # lapsed
    fresh = claim(fingerprint="fp-2", response='{"id":"new"}')
    assert await store.create_batch(batch_rec("batch_new"), fresh) is None
    assert await store.get_batch(None, "batch_new") is not None
    found = await store.find_idempotency("alice", "batch", "k1", NOW - DAY)
    assert found == IdempotencyRecord("fp-2", '{"id":"new"}', NOW)

    assert await store.create_batch(batch_rec("batch_k2"), claim("k2", now=old)) is None
    assert await store.forget_idempotency(NOW - DAY) == 1  # k2 only: k1 is fresh again
    assert await store.find_idempotency("alice", "batch", "k2", 0) is None
    assert await store.find_idempotency("alice", "batch", "k1", 0) is not None


async def test_concurrent_creates_with_one_key_make_one_batch(store: Store) -> None:
    outcomes = await asyncio.gather(
        *(store.create_batch(batch_rec(f"batch_race{i}"), claim("race")) for i in range(8))
    )
    assert sum(o is None for o in outcomes) == 1
    winner = [f"batch_race{i}" for i, o in enumerate(outcomes) if o is None]
    listed = await store.list_batches("alice", BatchFilter(), after=None, limit=100)
    assert [b.id for b in listed] == winner


@pytest.mark.postgres
async def test_concurrent_creates_from_two_processes_make_one_batch(pg_url: str) -> None:
    stores = [open_store(pg_url), open_store(pg_url)]
    for s in stores:
        await s.open()
    try:
        outcomes = await asyncio.gather(
            *(
                stores[i % 2].create_batch(batch_rec(f"batch_fleet{i}"), claim("fleet"))
                for i in range(12)
            )
        )
        assert sum(o is None for o in outcomes) == 1
        assert all(o == IdempotencyRecord("fp-1", '{"id":"first"}', NOW) for o in outcomes if o)
        listed = await stores[1].list_batches(None, BatchFilter(), after=None, limit=100)
        assert len(listed) == 1
    finally:
        for s in stores:
            await s.close()


# --- retention ---------------------------------------------------------------------------------


async def test_deleted_file_bytes_wait_for_the_batch_that_reads_them(store: Store) -> None:
    await store.create_file(file_rec("file-batch-in"))  # batch_rec's input file
    await store.create_file(file_rec("file-batch-loose"))
    await started(store, "batch_reading")
    assert await store.delete_file("alice", "file-batch-in") is not None
    assert await store.delete_file("alice", "file-batch-loose") is not None
    assert await store.file_usage("alice") == (0, 0)  # quota freed at once
    # The running batch still reads its input's bytes: only the other blob may go.
    assert await store.blobs_to_delete(100) == ["inputs/file-batch-loose"]
    await store.forget_blob_deletions(["inputs/file-batch-loose"])
    assert await store.blobs_to_delete(100) == []

    assert await store.request_cancel("alice", "batch_reading", NOW) is not None
    assert await store.blobs_to_delete(100) == []  # cancelling: still live
    assert await store.claim_finalization("batch_reading", "fin", time.time(), 60.0)
    assert await store.finish_finalization(
        "batch_reading", "fin", Status.CANCELLED, [], "batch_cancelled", "cancelled", NOW
    )
    assert await store.blobs_to_delete(100) == ["inputs/file-batch-in"]


async def test_expired_files_go_and_free_the_quota(store: Store) -> None:
    for i, expires in enumerate([NOW - 10, NOW - 5, NOW, NOW + 3600, None]):
        record = file_rec(f"file-batch-e{i}")
        record.expires_at = expires
        await store.create_file(record)
    assert await store.file_usage("alice") == (5, 500)
    assert await store.expire_files(NOW, limit=2) == 2  # oldest expiry first
    assert await store.get_file(None, "file-batch-e0") is None
    assert await store.get_file(None, "file-batch-e2") is not None
    assert await store.expire_files(NOW, limit=10) == 1
    assert await store.expire_files(NOW, limit=10) == 0
    assert await store.file_usage("alice") == (2, 200)
    assert sorted(await store.blobs_to_delete(100)) == [f"inputs/file-batch-e{i}" for i in range(3)]


async def test_expired_result_files_are_swept_too(store: Store) -> None:
    out = FileRecord(
        "file-batch_output-x", "alice", "batch_output", "o.jsonl", 7, NOW, "results/b/output"
    )
    out.expires_at = NOW - 1
    await store.create_file(out)
    assert await store.expire_files(NOW, 10) == 1
    assert await store.blobs_to_delete(10) == ["results/b/output"]


async def test_old_terminal_batches_lose_their_request_rows(store: Store) -> None:
    old = NOW - 40 * DAY
    await finished(store, "batch_old_done", created_at=old)
    await started(store, "batch_old_live", created_at=old, input_file_id="f2")
    await finished(store, "batch_recent_done")
    cutoff = NOW - 30 * DAY

    assert await store.retire_batches(cutoff, limit=10) == 1
    assert await results(store, "batch_old_done") == []
    assert len(await results(store, "batch_old_live")) == 5  # still running: untouched
    assert len(await results(store, "batch_recent_done")) == 3
    assert await store.retire_batches(cutoff, limit=10) == 0  # nothing left to do
    kept = await store.get_batch(None, "batch_old_done")  # the batch row stays
    assert kept is not None and kept.total == 3 and kept.status == Status.CANCELLED


def database_bytes(folder: Path, name: str) -> bytes:
    """The database file and its journals (WAL, shared memory), as they are on disk."""
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(name))


async def test_sqlite_never_holds_a_key_in_clear(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    secret = "sk-lt-this-is-the-secret-under-test-0123456789"
    await store.create_api_key(key_rec("key_s"), digest(secret))
    assert await store.find_api_key(digest(secret)) == "alice"
    await store.close()
    raw = database_bytes(tmp_path, "keys.db")
    assert digest(secret) in raw  # what is stored...
    assert secret.encode() not in raw  # ...and what is not
