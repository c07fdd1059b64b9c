"""Durable state: the ``Store`` port and its implementations, chosen from a URL."""

from __future__ import annotations

from pathlib import Path

from lowtide import errors
from lowtide.store.base import Store


def open_store(url: str) -> Store:
    """``sqlite:///relative/or/absolute/path.db`` (one process), or
    ``postgresql://user@host:port/dbname`` (also ``postgres://``; shared by a fleet)."""
    if url.startswith("sqlite:///"):
        from lowtide.store.sqlite import SQLiteStore

        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        from lowtide.store.postgres import PostgresStore

        return PostgresStore(url)
    raise errors.ConfigError(
        f"unsupported database_url {url!r}: use sqlite:///PATH or postgresql://..."
    )


__all__ = ["Store", "open_store"]
