"""Node.js SDK fixtures: the fake upstream and the real ``lowtide serve``, both processes on
loopback started through ``lowtide.testing.harness``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lowtide.testing.harness import Lowtide, Upstream
from tests.support.batches import config_toml


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = Upstream("--seed", "7", log=tmp_path / "upstream.log")
    yield up
    up.stop()


@pytest.fixture
def lowtide(tmp_path: Path, upstream: Upstream) -> Iterator[Lowtide]:
    workdir = tmp_path / "lowtide"
    workdir.mkdir()
    server = Lowtide(workdir, config_toml(upstream))
    try:
        server.start()
        yield server
    finally:
        server.stop()
