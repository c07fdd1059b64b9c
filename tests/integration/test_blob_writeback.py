"""The local blob store's background flushes (``lowtide.blobs.local``): a blob being written
is flushed to disk every ``WRITEBACK_EVERY`` bytes without waiting, and none of that changes
what a reader sees, what an error does, or which descriptors stay open."""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from lowtide import errors
from lowtide.blobs import local
from lowtide.blobs.local import LocalBlobStore

KiB = 1024
EVERY = 64 * KiB  # small, so that a few MiB go through dozens of flushes


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def frequent_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "WRITEBACK_EVERY", EVERY)


@pytest.fixture
async def store(tmp_path: Path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    await blobs.open()
    return blobs


def open_fds(root: Path) -> int:
    """Descriptors this process has open on files under ``root`` (the other tests of the
    process may open and close descriptors of their own meanwhile)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        count += target.startswith(str(root) + "/")
    return count


def wait_for_fds(root: Path) -> None:
    """Descriptors of aborted blobs are closed when their flush ends, in its thread."""
    deadline = time.monotonic() + 30  # only turns a hang into a failure
    while open_fds(root) > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open_fds(root) == 0


async def test_a_blob_written_through_many_flushes_reads_back_whole(
    store: LocalBlobStore,
) -> None:
    rnd = random.Random(3)
    parts = [rnd.randbytes(rnd.randint(1, 3 * EVERY)) for _ in range(60)]
    async with store.writer("files/file-big") as writer:
        for i, part in enumerate(parts):
            if i % 2:
                await writer.write(part)
            else:  # the result files' path: many lines in one call
                await writer.writelines([part[j : j + 100] for j in range(0, len(part), 100)])
        assert open_fds(store.root) >= 1  # the blob being written: the count sees it
    assert writer.size == sum(map(len, parts))
    assert (store.root / "files/file-big").read_bytes() == b"".join(parts)
    assert list((store.root / ".tmp").iterdir()) == []
    assert open_fds(store.root) == 0  # published: no flush is left running


async def test_an_aborted_blob_leaves_nothing_and_its_file_is_closed(
    store: LocalBlobStore,
) -> None:
    with pytest.raises(Boom):
        async with store.writer("files/file-aborted") as writer:
            for _ in range(40):
                await writer.write(os.urandom(EVERY // 2))
            raise Boom
    assert not await store.exists("files/file-aborted")
    assert list((store.root / ".tmp").iterdir()) == []
    wait_for_fds(store.root)


async def test_a_cancelled_blob_leaves_nothing_and_its_file_is_closed(
    store: LocalBlobStore,
) -> None:
    flushing = asyncio.Event()

    async def write_forever() -> None:
        async with store.writer("files/file-cancelled") as writer:
            written = 0
            while True:
                await writer.write(os.urandom(EVERY))
                written += 1
                if written >= 4:  # a flush starts every EVERY bytes: a few have started
                    flushing.set()
                await asyncio.sleep(0)

    task = asyncio.create_task(write_forever())
    await flushing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists("files/file-cancelled")
    assert list((store.root / ".tmp").iterdir()) == []
    wait_for_fds(store.root)


async def test_a_failed_background_flush_is_a_storage_error() -> None:
    # /dev/null takes writes but cannot be flushed (EINVAL): the error a failing disk would
    # give a background flush must reach the writer, since the final fsync may not see it.
    writer = local._LocalWriter(os.open("/dev/null", os.O_WRONLY))
    try:
        await writer.write(bytes(EVERY))
        with pytest.raises(errors.StorageError):
            await writer.flushed()
        with pytest.raises(errors.StorageError):  # and the next flush does not hide it
            await writer.write(bytes(EVERY))
    finally:
        writer.close()
