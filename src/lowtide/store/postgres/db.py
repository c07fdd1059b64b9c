"""The PostgreSQL store's plumbing: the connection pool, transactions that are tried again
after a deadlock, the schema upgrade at ``open()``, and cross-process wake-ups.

asyncpg is an optional dependency (``pip install 'lowtide[postgres]'``), imported when a store
is opened.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from lowtide import errors
from lowtide.store import migrations, queries
from lowtide.store.pg_listen import CHANNEL, Listener

logger = logging.getLogger(__name__)

T = TypeVar("T")
_ATTEMPTS = 5  # tries of a transaction that lost a deadlock or serialisation conflict


def load_asyncpg() -> Any:
    """asyncpg, or a configuration error saying how to install it."""
    try:
        import asyncpg
    except ImportError as exc:
        raise errors.ConfigError(
            "database_url is PostgreSQL but asyncpg is not installed: "
            "pip install 'lowtide[postgres]'"
        ) from exc
    return asyncpg


def count(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 12``."""
    return int(status.rsplit(" ", 1)[-1])


class Database:
    """The pool; ``q`` holds the statements by name."""

    q = queries.load("postgres")

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._pool: Any = None
        self._conflicts: tuple[type[BaseException], ...] = ()
        self._listener: Listener | None = None

    async def open(self) -> None:
        asyncpg = load_asyncpg()
        self._conflicts = (
            asyncpg.exceptions.DeadlockDetectedError,
            asyncpg.exceptions.SerializationError,
        )
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise errors.StorageError(f"cannot connect to the database: {exc}") from exc
        async with self._pool.acquire() as conn:
            applied = await migrations.upgrade(conn)
        if applied:
            logger.info("database schema upgraded: migrations %s applied", applied)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run ``fn(connection)`` (in a transaction), again if it lost a deadlock."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self._pool.acquire() as conn:
                    if not transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except self._conflicts:
                if attempt == _ATTEMPTS - 1:
                    raise
                logger.info("transaction conflict; trying again (attempt %d)", attempt + 2)
                await asyncio.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self._pool.fetchval(self.q["ping"])

    async def notify(self) -> None:
        await self._pool.execute(self.q["notify"], CHANNEL)

    async def subscribe(self, callback: Callable[[], None]) -> None:
        if self._listener is None:
            self._listener = Listener(self.url, load_asyncpg())
            await self._listener.start()
        self._listener.add(callback)
