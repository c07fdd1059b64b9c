"""Throwaway PostgreSQL databases for tests and benchmarks.

A template database gets the schema once (through the migration runner, as a real start-up
would); each test then gets its own copy (``CREATE DATABASE ... TEMPLATE``, a file copy, much
faster than running the schema again) and drops it afterwards, so tests never see each
other's rows. The server is the machine's: ``$LOWTIDE_TEST_PG_URL``, by default
``postgresql://postgres@127.0.0.1:5432/test`` (any database there will do for admin work).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

ADMIN_URL_ENV = "LOWTIDE_TEST_PG_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "lowtide_test_"


def admin_url() -> str:
    return os.environ.get(ADMIN_URL_ENV, DEFAULT_ADMIN_URL)


def url_of(database: str, base: str | None = None) -> str:
    """``base`` (the admin URL by default) pointing at another database."""
    parts = urlsplit(base or admin_url())
    return urlunsplit(parts._replace(path="/" + database))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop's
    thread (pytest fixtures): it runs on a loop of its own in another thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def reachable() -> str | None:
    """None if the server answers, else why not."""
    import asyncpg

    try:
        conn = await asyncpg.connect(admin_url(), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL not reachable at {admin_url()}: {exc}"
    await conn.close()
    return None


async def create_database(template: str | None = None) -> str:
    """A new empty database (or a copy of ``template``); returns its name."""
    name = PREFIX + secrets.token_hex(6)
    await _admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
    return name


async def drop_database(name: str) -> None:
    # FORCE: a test that failed half-way may have left connections open.
    await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def create_template() -> str:
    """A database with the current schema, to copy for each test (nobody may stay connected
    to it, or copies fail: the connection used here is closed before returning)."""
    import asyncpg

    from lowtide.store import migrations

    name = await create_database()
    conn = await asyncpg.connect(url_of(name))
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()
    return name
