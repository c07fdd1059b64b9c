"""``lowtide serve`` runs its engine on a thread and event loop of its own: the API's
wake-ups must cross over to it, and an engine that dies must take the process down with it
rather than leave an API that accepts batches nobody will run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowtide.testing.harness import HOST, Upstream, free_port, spawn

from .conftest import (
    ServerFactory,
    assert_each_once,
    chat_line,
    client,
    read_results,
    submit,
    wait_for,
)

# A side task of the engine ends while the engine runs, the way a bug would end it: a stray
# CancelledError (the task ends "cancelled"), or an exception that no guard catches.
_DIE = """
import asyncio, sys
from lowtide.cli.commands import cli
from lowtide.engine import retention

async def sweep(*args, **kwargs):
    raise {exception}()

retention.sweep = sweep
cli(sys.argv[1:], prog_name="lowtide")
"""


def test_a_new_batch_wakes_the_engine_on_its_thread(
    make_server: ServerFactory, upstream: Upstream
) -> None:
    # With an hour between polls, only the API's wake-up (crossing from its loop to the
    # engine's) can start a batch while the test waits (a minute at most).
    server = make_server(upstream, extra="poll_interval = 3600\n")
    c = client(server)
    # The first batch may be found by the engine's first look or by a wake-up; once it is
    # done, the engine has looked and gone back to sleeping for an hour.
    first = submit(c, [chat_line("first", "wake 0")])
    assert wait_for(c, first.id).status == "completed"
    lines = [chat_line(f"w-{i}", f"wake {i}") for i in range(50)]
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "completed", f"still {batch.status}: the wake-up was lost"
    outputs, errors = read_results(c, batch)
    assert_each_once(lines, outputs, errors)
    assert server.terminate() == 0


@pytest.mark.parametrize("exception", ["asyncio.CancelledError", "KeyboardInterrupt"])
@pytest.mark.measure_children
def test_a_dead_engine_stops_the_server_with_an_error(tmp_path: Path, exception: str) -> None:
    script = _DIE.format(exception=exception)
    cmd = [sys.executable, "-c", script, "serve", "--host", HOST, "--port", str(free_port())]
    cmd += ["--data-dir", str(tmp_path / "data")]
    proc = spawn(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "LOWTIDE_TESTING": "1"},
    )
    try:
        # It exits by itself; the timeout only turns a server that stays up into a failure.
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr
    assert "the engine stopped working" in stderr.decode()
