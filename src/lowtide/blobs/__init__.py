"""File bytes: the ``BlobStore`` port and its implementations, chosen from a URL."""

from __future__ import annotations

from pathlib import Path

from lowtide import errors
from lowtide.blobs.base import BlobStore, BlobWriter


def open_blobs(url: str) -> BlobStore:
    """``file:///absolute/path``; S3-compatible stores come with the scale-out mode."""
    if url.startswith("file://"):
        from lowtide.blobs.local import LocalBlobStore

        return LocalBlobStore(Path(url.removeprefix("file://")))
    raise errors.ConfigError(f"unsupported storage_url {url!r}: use file:///PATH")


__all__ = ["BlobStore", "BlobWriter", "open_blobs"]
