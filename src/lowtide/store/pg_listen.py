"""Cross-process wake-ups over PostgreSQL ``LISTEN`` / ``NOTIFY``.

A dedicated connection listens on one channel and calls the subscribers on every notification.
A wake-up is a hint only (the engines still poll), but a lost listening connection would make
every worker wait for its next poll: a supervisor task notices (termination callback, or a
periodic probe for a silently dead socket), reconnects with backoff, and then calls the
subscribers once, since notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CHANNEL = "lowtide_wake"
APPLICATION_NAME = "lowtide-listen"  # how an operator (or a test) finds the connection


class Listener:
    def __init__(
        self,
        url: str,
        asyncpg: Any,
        *,
        probe_interval: float = 5.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.url, self._asyncpg = url, asyncpg
        self.probe_interval, self.max_backoff = probe_interval, max_backoff
        self._callbacks: list[Callable[[], None]] = []
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._errors = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        self.reconnects = 0

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Listen now if the database answers (else the supervisor keeps trying)."""
        try:
            await self._connect()
        except self._errors as exc:
            logger.warning("cannot listen for wake-ups yet (%s); polling meanwhile", exc)
        self._task = asyncio.create_task(self._supervise(), name="lowtide-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    def _fire(self, *_: Any) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                logger.exception("wake-up callback failed")

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await self._asyncpg.connect(
            self.url, server_settings={"application_name": APPLICATION_NAME}
        )
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(CHANNEL, self._fire)
        self._conn = conn

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2.0)
            if not conn.is_closed():
                conn.terminate()

    async def _supervise(self) -> None:
        backoff = 0.1
        while True:
            if self._conn is None or self._conn.is_closed():
                await self._disconnect()
                try:
                    await self._connect()
                except self._errors as exc:
                    logger.warning("listening connection: %s; retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(self.max_backoff, backoff * 2)
                    continue
                self.reconnects += 1
                logger.info("listening for wake-ups again")
                backoff = 0.1
                self._fire()  # whatever was notified meanwhile is lost: look now
            await self._watch()

    async def _watch(self) -> None:
        """Return when the connection is lost (or a probe finds it dead)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lost.wait(), timeout=self.probe_interval)
        if self._lost.is_set() or self._conn is None:
            await self._disconnect()
            return
        try:
            await asyncio.wait_for(self._conn.execute("SELECT 1"), timeout=self.probe_interval)
        except self._errors:
            logger.warning("listening connection stopped answering; reconnecting")
            await self._disconnect()
