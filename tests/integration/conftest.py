"""Integration fixtures: real components on loopback."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lowtide.settings import S3Settings
from lowtide.store import Store, open_store
from lowtide.testing import postgres as pg
from lowtide.testing.harness import HOST, free_port

# --- S3: moto's server, a real S3-compatible HTTP endpoint in its own process -------------
# (its own process so that its memory does not count in the tests' tracemalloc figures)

S3_REGION = "us-east-1"
S3_KEY = "testing"  # moto accepts any credentials


class MotoServer:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdout=out,
                stderr=out,
            )
        self._wait_ready(log)

    def _wait_ready(self, log: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start")

    def settings(self, **changes: Any) -> S3Settings:
        return self.settings_for(self.endpoint, **changes)

    @staticmethod
    def settings_for(endpoint: str, **changes: Any) -> S3Settings:
        return S3Settings(
            endpoint_url=endpoint,
            region=S3_REGION,
            access_key_id=S3_KEY,
            secret_access_key=S3_KEY,
            **changes,
        )

    @functools.cache  # noqa: B019 - one client per server, which lives for the session
    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
        )

    def new_bucket(self) -> str:
        """A fresh bucket, so that tests sharing the server do not see each other's objects."""
        name = f"lowtide-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
