"""The engine on a thread of its own, with an event loop of its own (``lowtide serve``).

On one event loop with the API, every API call waited behind loop iterations full of dispatch
callbacks: while a large batch dispatched, ``batches.retrieve`` took several times its idle
time. On a loop of its own, the API waits for the GIL instead, which a busy thread
hands over at least every switch interval.

An object bound to an event loop (asyncio events, queues and tasks, aiohttp sessions, an asyncpg
pool) must stay on the loop that made it:

- the engine, the backends' sessions, and ``store`` (a store of the engine's own, given when the
  API's store is bound to the API's loop, as a PostgreSQL pool is) are started, used and closed
  on this thread's loop;
- ``wake`` crosses over with ``call_soon_threadsafe``;
- the SQLite store and the blob stores run each call on their thread pools through whichever
  loop awaits it, so one instance serves both loops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Sequence

from lowtide.backends.base import Backend
from lowtide.engine.engine import Engine
from lowtide.store import Store

logger = logging.getLogger(__name__)


class EngineDied(RuntimeError):
    """The engine stopped working while nobody had asked it to stop."""


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when it is installed, as uvicorn picks for the API's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


class EngineThread:
    def __init__(
        self,
        engine: Engine,
        *,
        backends: Sequence[Backend],
        store: Store | None = None,
        switch_interval: float | None = None,
    ) -> None:
        """``switch_interval``: the GIL switch interval to set while both threads run (see
        ``sys.setswitchinterval``); None leaves the interpreter's."""
        self.engine = engine
        self.backends = list(backends)
        self.store = store
        self.switch_interval = switch_interval
        #: Called once, on the engine's thread, if the engine stops working before ``stop``.
        self.on_failure: Callable[[BaseException], None] = lambda exc: None
        self.failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._interval_before = sys.getswitchinterval()

    # --- called from the API's loop ----------------------------------------------------------

    async def start(self) -> None:
        """Start the thread; return once the engine runs there, or raise what start-up raised."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        # A daemon: should the caller never get to ``stop`` (a failed start-up elsewhere), the
        # thread must not keep the process alive.
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="lowtide-engine", daemon=True
        )
        if self.switch_interval is not None:
            self._interval_before = sys.getswitchinterval()
            sys.setswitchinterval(self.switch_interval)
        self._thread.start()
        await asyncio.wrap_future(started)

    def wake(self) -> None:
        """From any thread: have the engine look for work at once."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: there is no one to wake
            loop.call_soon_threadsafe(self.engine.wake)

    async def stop(self) -> None:
        """Drain the engine on its loop (``Engine.stop``), close what was opened there, and
        wait for the thread to end."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the thread has already ended
                loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(thread.join)
        self._thread = None
        sys.setswitchinterval(self._interval_before)  # one thread again

    # --- the engine's thread -----------------------------------------------------------------

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._run(started))
        except BaseException as exc:  # whatever ended the thread is reported
            if not started.done():
                started.set_exception(exc)  # ``start`` raises it
            else:
                self._fail(exc)

    async def _run(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            if self.store is not None:
                await self.store.open()
            await self.engine.start()
        except BaseException:
            await self._close()
            raise
        started.set_result(None)
        watch = asyncio.create_task(self._watch(), name="lowtide-engine-watch")
        await self._stop.wait()
        watch.cancel()
        try:
            await self.engine.stop()
        finally:
            await self._close()

    async def _watch(self) -> None:
        """The engine's side tasks end only when it stops: one that ends before, ends it."""
        ended = await self.engine.wait_ended()
        cause = None if ended.cancelled() else ended.exception()
        died = EngineDied(f"engine task {ended.get_name()} ended while the engine was running")
        died.__cause__ = cause
        self._fail(died)

    async def _close(self) -> None:
        for backend in self.backends:
            await backend.close()
        if self.store is not None:
            await self.store.close()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        logger.critical("the engine stopped working: %r", exc, exc_info=exc)
        self.on_failure(exc)
