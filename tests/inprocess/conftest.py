"""The in-process tier: lowtide's API, service and engine inside the test's own process.

What runs. ``lowtide_app(...)`` builds the server of ``lowtide serve`` from a config
(``lowtide.server.build_server``), with the engine on the test's own event loop
(``engine_thread=False``) and no uvicorn: the official ``openai`` SDK
(``openai.AsyncOpenAI``, no retries) reaches the ASGI app through ``httpx.ASGITransport``, so no
port is opened for the API. Each app has a SQLite database and a local file store in the
test's temporary directory (or what its config names: the machine's PostgreSQL, moto's S3
server). The fake backend is ``lowtide.testing.upstream.FakeUpstream`` on a loopback port of
this same process (the ``upstream`` fixture). The app's lifespan does not run under
``ASGITransport``: the factory calls ``Server.start()`` and the fixture ``Server.stop()``, and
``gc.freeze()`` is left off (``freeze_gc=False``) so that hundreds of servers in one process
are freed.

Fixtures and helpers:

- ``lowtide_app(upstream=None, *, extra="", api_only=False, engine=None, toml=None, **config)``:
  start a server (``config`` goes to ``tests.support.batches.config_toml``, with the quick
  engine intervals of ``FAST_ENGINE``; ``toml`` replaces the whole config). The ``App`` it
  returns has ``client(key)`` (an ``AsyncOpenAI`` for ``ALICE``, ``BOB`` or any key),
  ``http`` (a plain ``httpx.AsyncClient`` on the app, for what the SDK cannot send),
  ``data`` (its data directory), ``db(sql, ...)`` (its SQLite database, read or changed
  beside it) and ``restart(api_only=...)`` (stop it and start it again on the same data: a
  clean shutdown; a crash, which only a real process can have, is for tests/acceptance).
- ``submit(c, lines)``, ``wait_for(c, batch_id, statuses)`` (polls with a deadline of a minute),
  ``read_results(c, batch)``.
- ``upstream``: a ``FakeUpstream`` with a fixed seed.
- ``clock``: a clock the test moves (below).

Time. The product reads the wall clock, ``time.time()``, wherever a rule depends on time
(completion windows, retention, expired files, rate-limit windows, idempotency keys, leases);
store methods take the ``now`` their callers read. The tests move that clock with
``time-machine``: the ``clock`` fixture starts ``time_machine.travel(now, tick=True)``, so the
wall clock runs on as usual, for every thread of the process (the SQLite store's threads too),
and ``clock.shift(seconds)`` jumps it forward: a completion window of 24 hours runs out at once,
a batch becomes 31 days old, a rate-limit window ends. A test that needs the clock to stand
still uses ``time_machine.travel(..., tick=False)`` itself. ``time.monotonic()`` is never moved:
asyncio's loop time, every timeout, the engine's poll and retry delays and the waits below run
in real time. So what depends on a *duration* the engine waits out (a retry's backoff, a
callback's next try, the sweeper's interval) is configured short, and its lower bound is
checked as a causal fact ("not before"), never an upper bound. Only the acceptance tier, which
starts ``lowtide serve`` as a process, uses the ``[testing]`` config knobs for short windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx2 as httpx
import openai
import pytest
import time_machine

from lowtide.server import Server, build_server
from lowtide.settings import Settings
from lowtide.testing import postgres as pg
from lowtide.testing.upstream import FakeUpstream, UpstreamConfig
from tests.support.batches import (
    ALICE,
    TERMINAL,
    HasBaseUrl,
    config_toml,
    jsonl,
    parse_jsonl,
)

#: Engine intervals for tests: polls and commits come quickly, a stop does not wait long for
#: requests that never answer. Leases stay at 10 s: tests that need them short say so.
FAST_ENGINE: Mapping[str, object] = {
    "poll_interval": 0.05,
    "commit_interval": 0.01,
    "shutdown_grace": 0.5,
}
BASE = "http://lowtide.test"


class _Asgi(Protocol):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


@dataclass
class App:
    """A running in-process server and what the tests reach it with."""

    settings: Settings
    workdir: Path
    api_only: bool
    server: Server
    _clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        # Clients call through here, so that they reach the new server after a restart.
        await self.server.app(scope, receive, send)

    def _http_client(self, **options: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self._asgi)
        made = httpx.AsyncClient(transport=transport, base_url=BASE, timeout=30, **options)
        self._clients.append(made)
        return made

    @property
    def http(self) -> httpx.AsyncClient:
        """A plain HTTP client on the app (no key: add the Authorization header yourself)."""
        return self._http_client()

    def client(self, key: str = ALICE, prefix: str = "/v1") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=BASE + prefix,
            api_key=key,
            max_retries=0,
            timeout=30,
            http_client=self._http_client(),
        )

    def db(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read or change the SQLite database beside the running server (WAL: safe)."""
        conn = sqlite3.connect(self.data / "lowtide.db", timeout=10)
        try:
            with conn:
                return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    @property
    def sqlite_url(self) -> str:
        return f"sqlite:///{self.data / 'lowtide.db'}"

    async def start(self) -> None:
        self.server = _build(self.settings, self.api_only)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def restart(self, *, api_only: bool | None = None) -> None:
        """A clean stop and a start on the same data (``api_only``: without the engine)."""
        await self.stop()
        if api_only is not None:
            self.api_only = api_only
        await self.start()

    async def close(self) -> None:
        await self.stop()
        for made in self._clients:
            await made.aclose()


def _build(settings: Settings, api_only: bool) -> Server:
    return build_server(settings, with_engine=not api_only, engine_thread=False, freeze_gc=False)


class AppFactory(Protocol):
    def __call__(
        self,
        upstream: HasBaseUrl | None = None,
        *,
        extra: str = "",
        api_only: bool = False,
        engine: Mapping[str, object] | None = None,
        toml: str | None = None,
        **config: Any,
    ) -> Awaitable[App]: ...


def settings_from(toml: str, workdir: Path) -> Settings:
    """The settings of ``toml``, with the data directory in ``workdir`` (made here)."""
    workdir.mkdir()
    raw = tomllib.loads(toml)
    raw.setdefault("server", {})["data_dir"] = str(workdir / "data")
    return Settings.model_validate(raw)


async def start_app(workdir: Path, toml: str, *, api_only: bool = False) -> App:
    """Start a server on ``workdir`` (made here) with the config ``toml``; the caller closes
    it (``App.close``). ``lowtide_app`` is the fixture for this; a module-scoped fixture may
    call it directly."""
    settings = settings_from(toml, workdir)
    app = App(settings, workdir, api_only, _build(settings, api_only))
    try:
        await app.server.start()
    except BaseException:
        # What did open (the store, say) is closed again: no thread or pool outlives the test.
        with contextlib.suppress(Exception):
            await app.server.blobs.close()
        with contextlib.suppress(Exception):
            await app.server.store.close()
        raise
    return app


@pytest.fixture
async def lowtide_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AppFactory]:
    monkeypatch.setenv("LOWTIDE_TESTING", "1")  # lets a test's config use [testing] knobs
    started: list[App] = []

    async def make(
        upstream: HasBaseUrl | None = None,
        *,
        extra: str = "",
        api_only: bool = False,
        engine: Mapping[str, object] | None = None,
        toml: str | None = None,
        **config: Any,
    ) -> App:
        if toml is None:
            engine = {**FAST_ENGINE, **(engine or {})}
            toml = config_toml(upstream, extra=extra, engine=engine, **config)
        app = await start_app(tmp_path / f"lowtide{len(started)}", toml, api_only=api_only)
        started.append(app)
        return app

    yield make
    for app in reversed(started):
        await app.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream(UpstreamConfig(seed=7)) as up:
        yield up


@pytest.fixture
def clock() -> Iterator[time_machine.Coordinates]:
    """The wall clock, running, that the test may shift forward (see the module's docstring)."""
    with time_machine.travel(time.time(), tick=True) as traveller:
        yield traveller


# --- driving batches ---------------------------------------------------------------------


async def submit(
    c: openai.AsyncOpenAI,
    lines: list[dict[str, Any]],
    *,
    endpoint: str = "/v1/chat/completions",
    **kwargs: Any,
) -> Any:
    f = await c.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return await c.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kwargs,
    )


async def wait_for(
    c: openai.AsyncOpenAI,
    batch_id: str,
    statuses: set[str] | frozenset[str] = TERMINAL,
    patience: float = 60.0,
) -> Any:
    """Poll until the batch is in one of ``statuses``; the deadline only turns a hang into a
    failure.

    Quick at first, then at most five times a second: the API allows an account 1,000
    retrieves a minute, which a poll every 20 ms spent in 20 s of a slow batch (a 429)."""
    deadline = time.monotonic() + patience
    pause = 0.02
    while True:
        batch = await c.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stuck in {batch.status}: {batch}")
        await asyncio.sleep(pause)
        pause = min(0.2, pause * 1.5)


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], what: str, patience: float = 30.0
) -> None:
    """Poll ``check`` until it holds; the deadline only turns a hang into a failure. The
    polls slow down as ``wait_for``'s do, since a check may be a call to the API."""
    deadline = time.monotonic() + patience
    pause = 0.02
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true: {what}")
        await asyncio.sleep(pause)
        pause = min(0.2, pause * 1.5)


async def wait_completed_at_least(c: openai.AsyncOpenAI, batch_id: str, n: int) -> None:
    async def done() -> bool:
        return (await c.batches.retrieve(batch_id)).request_counts.completed >= n

    await eventually(done, f"{n} lines of {batch_id} completed", patience=60)


async def read_results(
    c: openai.AsyncOpenAI, batch: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out = (await c.files.content(batch.output_file_id)).text if batch.output_file_id else ""
    err = (await c.files.content(batch.error_file_id)).text if batch.error_file_id else ""
    return parse_jsonl(out), parse_jsonl(err)


async def ids(listing: Any) -> list[str]:
    """The ids of every item of a list call, through all its pages."""
    return [item.id async for item in listing]


@contextlib.contextmanager
def frozen_at(epoch: float) -> Iterator[time_machine.Coordinates]:
    """The wall clock stopped at ``epoch`` (it moves only by ``shift``)."""
    with time_machine.travel(epoch, tick=False) as traveller:
        yield traveller


# --- the machine's PostgreSQL ---------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with the schema, copied for each test that asks (skip if there is none)."""
    problem = pg.run_sync(pg.reachable())
    if problem:
        pytest.skip(problem)
    name = pg.run_sync(pg.create_template())
    yield name
    pg.run_sync(pg.drop_database(name))


@pytest.fixture
async def pg_database(pg_template: str) -> AsyncIterator[str]:
    """The URL of a database of this test's own, with the schema; dropped afterwards. A test
    names it before ``lowtide_app``, so that its servers stop before it is dropped."""
    name = await pg.create_database(template=pg_template)
    yield pg.url_of(name)
    await pg.drop_database(name)
