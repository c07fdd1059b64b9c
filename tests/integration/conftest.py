"""Integration fixtures: real components on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from lowtide.store import Store, open_store
from lowtide.testing import postgres as pg
from tests.support.moto import MotoServer

# --- S3: moto's server, a real S3-compatible HTTP endpoint in its own process -------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


# --- stores: the store behaviour tests run once per store ---------------------------------


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database with the schema, copied for each PostgreSQL test (skip if there is none)."""
    problem = pg.run_sync(pg.reachable())
    if problem:
        pytest.skip(problem)
    name = pg.run_sync(pg.create_template())
    yield name
    pg.run_sync(pg.drop_database(name))


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A database of its own for one test, dropped afterwards."""
    name = pg.run_sync(pg.create_database(template=pg_template))
    yield pg.url_of(name)
    pg.run_sync(pg.drop_database(name))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lowtide.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = open_store(url)
    await opened.open()
    yield opened
    await opened.close()
