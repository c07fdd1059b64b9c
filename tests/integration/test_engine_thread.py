"""The engine's thread (``lowtide.engine.threaded``): start-up failures reach the caller."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from lowtide import errors
from lowtide.blobs import open_blobs
from lowtide.engine.engine import Engine
from lowtide.engine.router import Router
from lowtide.engine.threaded import EngineThread
from lowtide.settings import load_settings
from lowtide.store import open_store
from lowtide.testing.harness import HOST, free_port


async def test_a_failed_start_is_raised_by_start_and_ends_the_thread(tmp_path: Path) -> None:
    # A PostgreSQL store that cannot connect: opening it, on the engine's loop, fails.
    store = open_store(f"postgresql://postgres@{HOST}:{free_port()}/nowhere")
    settings = load_settings(data_dir=tmp_path)
    blobs = open_blobs(f"file://{tmp_path / 'files'}")
    engine = Engine(settings, store, blobs, Router([]), exclusive=False)
    thread = EngineThread(engine, backends=[], store=store)
    with pytest.raises(errors.StorageError, match="cannot connect"):
        await thread.start()
    await thread.stop()  # nothing left to stop: returns at once
    assert not [t for t in threading.enumerate() if t.name == "lowtide-engine"]
    thread.wake()  # a wake-up after the end is dropped, not an error
