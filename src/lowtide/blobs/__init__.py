"""File bytes: the ``BlobStore`` port and its implementations, chosen from a URL."""

from __future__ import annotations

from pathlib import Path

from lowtide import errors
from lowtide.blobs.base import BlobStore, BlobWriter
from lowtide.settings import S3Settings


def open_blobs(url: str, s3: S3Settings | None = None) -> BlobStore:
    """``file:///absolute/path``, or ``s3://bucket/prefix`` (configured by ``s3``)."""
    if url.startswith("file://"):
        from lowtide.blobs.local import LocalBlobStore

        return LocalBlobStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        # Imported here so that boto3 is needed only by those who store blobs on S3.
        from lowtide.blobs.s3 import S3BlobStore

        return S3BlobStore.from_url(url, s3 or S3Settings())
    raise errors.ConfigError(
        f"unsupported storage_url {url!r}: use file:///PATH or s3://BUCKET/PREFIX"
    )


__all__ = ["BlobStore", "BlobWriter", "open_blobs"]
