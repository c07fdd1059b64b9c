"""The ``BlobStore`` contract, written once and run against both stores: the local directory,
and S3 (moto's server on loopback, spoken to over HTTP by boto3)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from lowtide import errors
from lowtide.blobs import BlobStore, open_blobs
from lowtide.blobs.local import LocalBlobStore
from lowtide.blobs.s3 import S3BlobStore
from lowtide.settings import S3Settings
from lowtide.testing.harness import HOST, free_port

from .conftest import MotoServer

MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part: the multipart path runs with little data
PREFIX = "some/prefix"


class Boom(Exception):
    pass


@pytest.fixture(params=["local", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], BlobStore]:
    if request.param == "local":
        return lambda: LocalBlobStore(tmp_path / "blobs")
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    return lambda: S3BlobStore(bucket, PREFIX, server.settings(part_size=PART))


@pytest.fixture
async def blobs(make_store: Callable[[], BlobStore]) -> AsyncIterator[BlobStore]:
    store = make_store()
    await store.open()
    yield store
    await store.close()


async def put(blobs: BlobStore, key: str, data: bytes) -> None:
    async with blobs.writer(key) as writer:
        await writer.write(data)


async def read_all(blobs: BlobStore, key: str, chunk_size: int = 1 << 20) -> bytes:
    return b"".join([chunk async for chunk in blobs.stream(key, chunk_size)])


def odd_chunks(total: int, size: int = 777_777) -> Iterator[bytes]:
    """``total`` pseudo-random bytes in chunks that never line up with a part."""
    rng = random.Random(42)
    left = total
    while left:
        n = min(size, left)
        yield rng.randbytes(n)
        left -= n


async def test_write_then_read_back(blobs: BlobStore) -> None:
    async with blobs.writer("files/file-abc") as writer:
        await writer.write(b'{"a": 1}\n')
        await writer.write(b'{"b": 2}\n')
        assert writer.size == 18
    assert await blobs.exists("files/file-abc")
    assert await read_all(blobs, "files/file-abc") == b'{"a": 1}\n{"b": 2}\n'


async def test_an_empty_blob_is_published(blobs: BlobStore) -> None:
    async with blobs.writer("results/batch_1/errors") as writer:
        assert writer.size == 0
    assert await blobs.exists("results/batch_1/errors")
    assert await read_all(blobs, "results/batch_1/errors") == b""


async def test_rewriting_a_key_replaces_it_whole(blobs: BlobStore) -> None:
    await put(blobs, "k", b"first version")
    await put(blobs, "k", b"second")
    assert await read_all(blobs, "k") == b"second"


@pytest.mark.parametrize("size", [100, 6 * MiB], ids=["one-put", "multipart"])
async def test_an_exception_inside_the_writer_leaves_nothing(blobs: BlobStore, size: int) -> None:
    with pytest.raises(Boom):
        async with blobs.writer("files/doomed") as writer:
            await writer.write(b"x" * size)
            raise Boom
    assert not await blobs.exists("files/doomed")
    with pytest.raises(errors.StorageError):
        await blobs.read_range("files/doomed", 0, 1)


async def test_a_cancelled_write_leaves_nothing(blobs: BlobStore) -> None:
    under_way = asyncio.Event()

    async def write() -> None:
        async with blobs.writer("files/cancelled") as writer:
            for chunk in odd_chunks(32 * MiB, MiB):
                await writer.write(chunk)
                if writer.size > PART:  # a part is stored: the S3 upload has begun
                    under_way.set()
                await asyncio.sleep(0)  # the local writer never waits: let the cancel land

    task = asyncio.create_task(write())
    await under_way.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await blobs.exists("files/cancelled")


async def test_a_failed_rewrite_keeps_the_old_blob(blobs: BlobStore) -> None:
    await put(blobs, "k", b"old")
    with pytest.raises(Boom):
        async with blobs.writer("k") as writer:
            await writer.write(b"n" * (6 * MiB))
            raise Boom
    assert await read_all(blobs, "k") == b"old"


async def test_a_blob_being_written_is_invisible(blobs: BlobStore) -> None:
    seen: list[bool] = []
    async with blobs.writer("files/slow") as writer:
        for chunk in odd_chunks(6 * MiB, 1 * MiB):  # crosses a part: an upload is under way
            await writer.write(chunk)
            seen += await asyncio.gather(*(blobs.exists("files/slow") for _ in range(3)))
    assert seen and not any(seen)
    assert await blobs.exists("files/slow")


async def test_a_large_blob_streams_through_bounded_memory(blobs: BlobStore) -> None:
    total = 12 * MiB
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        async with blobs.writer("files/big") as writer:
            for chunk in odd_chunks(total):
                digest.update(chunk)
                await writer.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert writer.size == total
    # A writer holds one part (5 MiB) and the chunk being written, never the blob
    # (measured: about 7 MiB on S3; buffering the whole blob would be over 14 MiB).
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB while writing {total / MiB:.0f} MiB"

    got = hashlib.sha256()
    async for chunk in blobs.stream("files/big"):
        got.update(chunk)
    assert got.hexdigest() == digest.hexdigest()
    expected = b"".join(odd_chunks(total))
    for offset in (0, PART - 3, 2 * PART - 1, total - 10):  # across the parts' seams
        assert await blobs.read_range("files/big", offset, 10) == expected[offset : offset + 10]


async def test_read_range_at_any_offset(blobs: BlobStore) -> None:
    data = bytes(range(256)) * 4 + b"end"
    await put(blobs, "files/r", data)
    for offset, length in [(0, 1), (0, len(data)), (1, 10), (255, 2), (700, 300)]:
        assert await blobs.read_range("files/r", offset, length) == data[offset : offset + length]
    assert await blobs.read_range("files/r", len(data) - 1, 1) == b"d"  # the last byte
    with pytest.raises(errors.StorageError):
        await blobs.read_range("files/r", len(data) - 2, 5)  # runs past the end


async def test_stream_yields_everything_in_chunks(blobs: BlobStore) -> None:
    data = bytes(random.Random(1).randbytes(10_001))
    await put(blobs, "files/s", data)
    chunks = [chunk async for chunk in blobs.stream("files/s", chunk_size=1000)]
    assert b"".join(chunks) == data
    assert len(chunks) >= 11 and all(len(c) <= 1000 for c in chunks)


async def test_delete_and_exists(blobs: BlobStore) -> None:
    assert not await blobs.exists("files/d")
    await put(blobs, "files/d", b"x")
    assert await blobs.exists("files/d")
    await blobs.delete("files/d")
    assert not await blobs.exists("files/d")
    await blobs.delete("files/d")  # deleting what is gone is not an error


async def test_ping(blobs: BlobStore) -> None:
    await blobs.ping()


@pytest.mark.parametrize("key", ["", "../x", "/abs", "a/../b", "a//b", "a b", "a/", ".hidden"])
async def test_invalid_keys_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(errors.StorageError, match="invalid blob key"):
        async with blobs.writer(key) as writer:
            await writer.write(b"x")
    with pytest.raises(errors.StorageError, match="invalid blob key"):
        await blobs.read_range(key, 0, 1)
    with pytest.raises(errors.StorageError, match="invalid blob key"):
        await read_all(blobs, key)
    with pytest.raises(errors.StorageError, match="invalid blob key"):
        await blobs.exists(key)
    with pytest.raises(errors.StorageError, match="invalid blob key"):
        await blobs.delete(key)


async def test_reading_a_missing_blob_is_astorage_error(blobs: BlobStore) -> None:
    with pytest.raises(errors.StorageError):
        await blobs.read_range("files/nothing", 0, 1)
    with pytest.raises(errors.StorageError):
        await read_all(blobs, "files/nothing")


# --- S3 only ---------------------------------------------------------------------------


def test_open_blobs_reads_bucket_and_prefix(s3_server: MotoServer) -> None:
    store = open_blobs("s3://my-bucket/a/b/", s3_server.settings())
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.part_size) == ("my-bucket", "a/b/", 16 * MiB)
    bare = open_blobs("s3://my-bucket", s3_server.settings())
    assert isinstance(bare, S3BlobStore) and bare.prefix == ""
    with pytest.raises(errors.ConfigError):
        open_blobs("s3:///no-bucket", s3_server.settings())


async def test_s3_keys_live_under_the_prefix(s3_server: MotoServer) -> None:
    bucket = s3_server.new_bucket()
    store = S3BlobStore(bucket, PREFIX, s3_server.settings())
    await store.open()
    await put(store, "files/file-1", b"x")
    await store.close()
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"{PREFIX}/files/file-1"]


async def test_s3_a_failed_multipart_write_is_aborted(s3_server: MotoServer) -> None:
    bucket = s3_server.new_bucket()
    store = S3BlobStore(bucket, "", s3_server.settings(part_size=PART))
    await store.open()
    with pytest.raises(Boom):
        async with store.writer("files/doomed") as writer:
            await writer.write(b"x" * (PART + 1))  # one part uploaded, one buffered
            raise Boom
    await store.close()
    client = s3_server.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=bucket).get("Contents", []) == []


async def test_s3_open_refuses_a_missing_bucket(s3_server: MotoServer) -> None:
    store = S3BlobStore("no-such-bucket-here", "", s3_server.settings())
    with pytest.raises(errors.ConfigError, match="does not exist"):
        await store.open()
    await store.close()


async def test_s3_open_reports_an_unreachable_endpoint() -> None:
    settings = MotoServer.settings_for(f"http://{HOST}:{free_port()}")
    store = S3BlobStore("bucket", "", settings)
    with pytest.raises(errors.StorageError, match="cannot reach"):
        await store.open()
    with pytest.raises(errors.StorageError):
        await store.ping()
    await store.close()


@pytest.mark.parametrize(
    ("code", "status"),
    [("QuotaExceeded", 403), ("EntityTooLarge", 400), ("XMinioStorageFull", 507), ("", 507)],
)
def test_s3_no_room_is_storage_full(code: str, status: int) -> None:
    from botocore.exceptions import ClientError

    from lowtide.blobs.s3 import storage_error

    failure = ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart"
    )
    assert isinstance(storage_error(failure, "write"), errors.StorageFull)
    other = ClientError({"Error": {"Code": "InternalError"}}, "UploadPart")
    mapped = storage_error(other, "write")
    assert type(mapped) is errors.StorageError and "InternalError" in mapped.message


async def test_s3_settings_fall_back_to_the_aws_environment(
    s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = open_blobs(f"s3://{bucket}/p", S3Settings())
    assert isinstance(store, S3BlobStore)
    assert store.client.meta.region_name == "eu-west-1"
    await store.open()
    await put(store, "files/env", b"from the environment")
    assert await read_all(store, "files/env") == b"from the environment"
    await store.close()
