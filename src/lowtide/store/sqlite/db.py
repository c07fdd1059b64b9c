"""The SQLite store's plumbing: one writer thread, a small pool of reader threads, WAL.

Every write goes to one thread that owns the write connection (``BEGIN IMMEDIATE`` ... ``COMMIT``),
so writes never contend; reads run on their own connections and never wait for a write (WAL).
``synchronous=FULL`` makes every commit durable against power loss as well as ``kill -9``; group
commits (one transaction for many results) keep that cheap.

SQLite mode is one process: a second process on the same file is not supported (use PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from lowtide.store import migrations, queries

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Database:
    """Connections and the two thread pools; ``q`` holds the statements by name."""

    q = queries.load("sqlite")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lowtide-sqlite-w")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lowtide-sqlite-r")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Takes effect only when the file is created. With 4 KiB pages a result line of about
        # 1 KB overflows its page (rows of a WITHOUT ROWID table must fit a quarter of one):
        # reading 50,000 of them back took 3× longer than with 16 KiB pages.
        conn.execute("PRAGMA page_size=16384")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA foreign_keys=OFF")
        with self._conns_lock:
            self._all_conns.append(conn)
        return conn

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, in one transaction."""

        def run() -> T:
            assert self._write_conn is not None
            conn = self._write_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            return fn(self._reader_conn())

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    async def open(self) -> None:
        """Open the file (made if missing) and bring its schema up to date."""
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def setup() -> None:
            conn = self._connect()
            conn.row_factory = sqlite3.Row
            applied = migrations.upgrade_sqlite(conn)
            if applied:
                logger.info("database schema upgraded: migrations %s applied", applied)
            self._write_conn = conn

        await asyncio.get_running_loop().run_in_executor(self._writer, setup)

    async def close(self) -> None:
        def close_all() -> None:
            with self._conns_lock:
                for conn in self._all_conns:
                    conn.close()
                self._all_conns.clear()

        self._readers.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(self._writer, close_all)
        self._writer.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute(self.q["ping"]).fetchone())

    async def notify(self) -> None:
        return None  # one process: the engine is woken directly

    async def subscribe(self, callback: Callable[[], None]) -> None:
        return None
