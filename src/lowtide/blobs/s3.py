"""File bytes in an S3-compatible object store (AWS S3, MinIO, Ceph, R2, GCS in S3 mode).

A blob becomes visible only when ``put_object`` or ``complete_multipart_upload`` returns, both
atomic on S3, so a reader sees a whole blob or none (design invariant 3); a writer that fails
aborts its multipart upload. Large blobs stream out in parts of ``s3.part_size`` bytes, so a
writer holds about one part in memory whatever the blob's size.

boto3 is synchronous but its clients are thread-safe: the store keeps one client, and runs
its calls on a thread pool as large as the client's connection pool, so the event loop never
waits on the network and range reads on the dispatch path reuse pooled connections.

This module is imported only for ``s3://`` storage URLs, so boto3 is needed only then.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from lowtide import errors
from lowtide.settings import S3Settings

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise errors.ConfigError("storage_url s3://... needs boto3: pip install 'lowtide[s3]'") from exc

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The same rule as the local store: keys are built from ids, never from user input.
_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_.\-]+)*")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9._\-]+$")
#: Connections kept to the store, and threads running boto3 calls.
_POOL = 64
#: Error codes meaning "no room": S3's own, and those of MinIO and Ceph.
_FULL_CODES = frozenset(
    {
        "EntityTooLarge",
        "QuotaExceeded",
        "InsufficientStorage",
        "XMinioStorageFull",
        "XMinioAdminBucketQuotaExceeded",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_BOTO_ERRORS = (BotoCoreError, ClientError)


class _S3Writer:
    """Buffers one part; each full part is uploaded before ``write`` returns."""

    def __init__(self, store: S3BlobStore, name: str) -> None:
        self._store = store
        self._name = name
        self._buffer = bytearray()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        part_size = self._store.part_size
        view = memoryview(data)
        self._size += len(view)
        while view:
            room = part_size - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == part_size:
                # Hand the full buffer over rather than copy it: memory stays at one part.
                part, self._buffer = self._buffer, bytearray()
                await self._upload_part(part)

    async def writelines(self, lines: Sequence[bytes]) -> None:
        for line in lines:
            await self.write(line)

    async def _upload_part(self, part: bytearray) -> None:
        store = self._store
        if self._upload_id is None:
            created = await store.call(
                "write", store.client.create_multipart_upload, Bucket=store.bucket, Key=self._name
            )
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        uploaded = await store.call(
            "write",
            store.client.upload_part,
            Bucket=store.bucket,
            Key=self._name,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
        )
        # Free the part now: the pool thread may hold the call's arguments for a moment after
        # the call returns, while the next part is already filling. (Not on failure: after a
        # cancellation the thread may still be sending it.)
        part.clear()
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

    async def publish(self) -> None:
        store = self._store
        if self._upload_id is None:
            # Smaller than one part: a single put, atomic like the multipart completion.
            await store.call(
                "write",
                store.client.put_object,
                Bucket=store.bucket,
                Key=self._name,
                Body=self._buffer,
            )
            return
        if self._buffer:  # the last part may be smaller than part_size
            part, self._buffer = self._buffer, bytearray()
            await self._upload_part(part)
        await store.call(
            "write",
            store.client.complete_multipart_upload,
            Bucket=store.bucket,
            Key=self._name,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        store = self._store
        try:
            await store.call(
                "abort",
                store.client.abort_multipart_upload,
                Bucket=store.bucket,
                Key=self._name,
                UploadId=self._upload_id,
            )
        except errors.StorageError:
            # The object was never published; only the stored parts are left, which a
            # bucket lifecycle rule (AbortIncompleteMultipartUpload) removes.
            logger.warning("could not abort the multipart upload of %s", self._name)


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        if not _BUCKET_RE.match(bucket):
            raise errors.ConfigError(
                f"invalid S3 bucket name {bucket!r}: use storage_url = 's3://BUCKET/PREFIX'"
            )
        self.bucket = bucket
        #: ``""`` or ``"some/prefix/"``: prepended to every key.
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.part_size = settings.part_size
        self.endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        self.client: Any = _make_client(settings)
        self._pool = ThreadPoolExecutor(max_workers=_POOL, thread_name_prefix="lowtide-s3")

    @classmethod
    def from_url(cls, url: str, settings: S3Settings) -> S3BlobStore:
        """``s3://bucket`` or ``s3://bucket/prefix``."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return cls(bucket, prefix, settings)

    async def call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one boto3 call on the pool; its failures become ``StorageError``s."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except _BOTO_ERRORS as exc:
            raise storage_error(exc, what) from exc

    async def open(self) -> None:
        """Check that the bucket is there and ours to use; create nothing."""
        where = f"S3 bucket {self.bucket!r} at {self.endpoint}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._pool, functools.partial(self.client.head_bucket, Bucket=self.bucket)
            )
        except NoCredentialsError as exc:
            raise errors.ConfigError(
                f"no credentials for {where}: set [s3] access_key_id and secret_access_key, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from exc
        except ClientError as exc:
            status = _status(exc)
            if status == 404 or _code(exc) == "NoSuchBucket":
                raise errors.ConfigError(f"{where} does not exist: create it first") from exc
            if status in (401, 403):
                raise errors.ConfigError(
                    f"access to {where} is denied: check the credentials and their policy"
                ) from exc
            raise errors.StorageError(f"{where} answered {_code(exc) or status}") from exc
        except BotoCoreError as exc:
            raise errors.StorageError(f"cannot reach {where}: {exc}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    async def ping(self) -> None:
        await self.call("ping", self.client.head_bucket, Bucket=self.bucket)

    def _name(self, key: str) -> str:
        if not _KEY_RE.fullmatch(key) or ".." in key:
            raise errors.StorageError(f"invalid blob key {key!r}")
        return self.prefix + key

    @asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[_S3Writer]:
        writer = _S3Writer(self, self._name(key))
        try:
            yield writer
            await writer.publish()
        except BaseException:
            await writer.abort()
            raise

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)
        if length <= 0:
            return b""
        data = await self.call(f"read {key}", self._get_range, name, offset, length)
        if len(data) != length:
            raise errors.StorageError(f"blob {key} is shorter than expected")
        return data

    def _get_range(self, name: str, offset: int, length: int) -> bytes:
        """In a worker thread: one ranged GET, read whole (a request body is small)."""
        got = self.client.get_object(
            Bucket=self.bucket, Key=name, Range=f"bytes={offset}-{offset + length - 1}"
        )
        body = got["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        name = self._name(key)
        got = await self.call(f"read {key}", self.client.get_object, Bucket=self.bucket, Key=name)
        body = got["Body"]
        try:
            while chunk := await self.call(f"read {key}", body.read, chunk_size):
                yield bytes(chunk)
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        # Deleting a missing object succeeds on S3, as on the local store.
        await self.call(
            f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=self._name(key)
        )

    async def exists(self, key: str) -> bool:
        return await self.call(f"check {key}", self._head, self._name(key))

    def _head(self, name: str) -> bool:
        """In a worker thread: a missing object is an answer here, not a failure."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True


def _make_client(settings: S3Settings) -> Any:
    """One client per store. Unset settings fall back to boto3's environment and chain."""
    options: dict[str, Any] = {
        "max_pool_connections": _POOL,
        "retries": {"mode": "standard", "max_attempts": 3},
        "connect_timeout": 10,
        "read_timeout": 60,
        "s3": {"addressing_style": settings.addressing_style},
    }
    # Since botocore 1.36 uploads carry CRC checksums by default, which several S3-compatible
    # stores refuse; send them only where S3 requires them. Older botocore sends none anyway.
    checksums = {
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    try:
        config = Config(**options, **checksums)
    except TypeError:  # pragma: no cover - botocore < 1.36
        config = Config(**options)
    region = settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,  # None: AWS_ENDPOINT_URL, else AWS itself
        region_name=region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def storage_error(exc: Exception, what: str) -> errors.StorageError:
    """Map a boto3 failure to lowtide's errors. Clients see the message: keep it short and
    free of endpoints; the log has the rest."""
    logger.warning("S3 %s failed: %s", what, exc)
    if isinstance(exc, ClientError):
        code, status = _code(exc), _status(exc)
        if code in _FULL_CODES or status == 507:
            return errors.StorageFull()
        if code in _MISSING_CODES:
            return errors.StorageError(f"{what}: the blob is missing")
        return errors.StorageError(f"storage failed ({what}): {code or status}")
    return errors.StorageError(f"storage failed ({what}): {type(exc).__name__}")
