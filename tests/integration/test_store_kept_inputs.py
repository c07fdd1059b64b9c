"""An input file deleted before its batch validated: the ``Store`` keeps it for the batches
created before the delete, and for them only, until its bytes are gone. Run against SQLite
and PostgreSQL alike."""

from __future__ import annotations

import dataclasses

from lowtide.domain.records import BatchRecord
from lowtide.store import Store
from tests.integration.test_store import NOW, batch_rec, file_rec


def batch_of(batch_id: str, file_id: str, account: str = "alice") -> BatchRecord:
    return batch_rec(batch_id, account, input_file_id=file_id)


async def test_delete_keeps_the_input_of_batches_still_validating(store: Store) -> None:
    await store.create_file(file_rec("file-batch-in"))
    await store.create_batch(batch_of("batch_before", "file-batch-in"))
    await store.create_batch(batch_of("batch_bob", "file-batch-in", account="bob"))
    assert await store.kept_input("batch_before") is None  # the file is still there

    assert await store.delete_file("alice", "file-batch-in") == file_rec("file-batch-in")
    await store.create_batch(batch_of("batch_after", "file-batch-in"))

    assert await store.get_file("alice", "file-batch-in") is None
    assert await store.file_usage("alice") == (0, 0)
    assert await store.kept_input("batch_before") == ("batch", "inputs/file-batch-in")
    assert await store.kept_input("batch_after") is None  # created after the delete
    assert await store.kept_input("batch_bob") is None  # never could read alice's file
    # The bytes stay while those batches live (validating counts)...
    assert await store.blobs_to_delete(10) == []


async def test_kept_input_keeps_the_purpose_and_goes_with_the_bytes(store: Store) -> None:
    await store.create_file(file_rec("file-user-x", purpose="user_data"))
    await store.create_batch(batch_of("batch_x", "file-user-x"))
    await store.delete_file("alice", "file-user-x")
    assert await store.kept_input("batch_x") == ("user_data", "inputs/file-user-x")

    await store.forget_blob_deletions(["inputs/file-user-x"])
    assert await store.kept_input("batch_x") is None


async def test_a_file_no_batch_validates_keeps_nothing(store: Store) -> None:
    await store.create_file(file_rec("file-batch-lone"))
    await store.delete_file("alice", "file-batch-lone")
    assert await store.blobs_to_delete(10) == ["inputs/file-batch-lone"]
    assert await store.kept_input("batch_none") is None


async def test_an_expired_file_is_kept_for_the_batches_still_validating(store: Store) -> None:
    expiring = dataclasses.replace(file_rec("file-batch-exp"), expires_at=NOW - 1)
    await store.create_file(expiring)
    await store.create_batch(batch_of("batch_exp", "file-batch-exp"))
    assert await store.expire_files(NOW, 10) == 1
    assert await store.get_file("alice", "file-batch-exp") is None
    assert await store.kept_input("batch_exp") == ("batch", "inputs/file-batch-exp")
    assert await store.blobs_to_delete(10) == []  # its batch still reads the bytes
