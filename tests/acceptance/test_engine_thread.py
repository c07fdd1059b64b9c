"""``lowtide serve`` runs its engine on a thread and event loop of its own (issue 5): the API's
wake-ups must cross over to it, and an engine that dies must take the process down with it
rather than leave an API that accepts batches nobody will run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowtide.testing.harness import HOST, Upstream, free_port

from .conftest import ServerFactory, assert_each_once, chat_line, client, read_results, submit

# A side task of the engine ends while the engine runs, the way a bug would end it: a stray
# CancelledError (the task ends "cancelled"), or an exception that no guard catches.
_DIE = """
import asyncio, sys
from lowtide.cli.main import cli
from lowtide.engine import retention

async def sweep(*args, **kwargs):
    raise {exception}()

retention.sweep = sweep
cli(sys.argv[1:], prog_name="lowtide")
"""


def test_a_new_batch_wakes_the_engine_on_its_thread(
    make_server: ServerFactory, upstream: Upstream
) -> None:
    # With a 30 s poll, only the API's wake-up (crossing from its loop to the engine's) can
    # start the batch this soon.
    server = make_server(upstream, extra="poll_interval = 30\n")
    c = client(server)
    time.sleep(0.5)  # the engine's first look has found nothing: it now sleeps for 30 s
    lines = [chat_line(f"w-{i}", f"wake {i}") for i in range(50)]
    batch = submit(c, lines)
    deadline = time.monotonic() + 10
    while (batch := c.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, f"still {batch.status}: the wake-up was lost"
        time.sleep(0.05)
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert server.terminate() == 0


@pytest.mark.parametrize("exception", ["asyncio.CancelledError", "KeyboardInterrupt"])
def test_a_dead_engine_stops_the_server_with_an_error(tmp_path: Path, exception: str) -> None:
    script = _DIE.format(exception=exception)
    cmd = [sys.executable, "-c", script, "serve", "--host", HOST, "--port", str(free_port())]
    cmd += ["--data-dir", str(tmp_path / "data")]
    started = time.monotonic()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "LOWTIDE_TESTING": "1"},
    )
    assert done.returncode == 1, done.stderr
    assert "the engine stopped working" in done.stderr
    assert time.monotonic() - started < 30
