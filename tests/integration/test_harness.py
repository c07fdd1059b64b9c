"""The harness's children die with the process that started them, and only then.

A parent that is SIGKILLed (a test timeout, a killed benchmark) runs no clean-up, so nothing
but the kernel can stop the ``lowtide serve`` and fake upstream it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowtide.testing.harness import Lowtide, Upstream, http_json

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

# The parent: a fake upstream (with its own parent watch off, so that only the harness's guard
# can stop it) and a lowtide started from a thread that has ended before the parent is killed:
# that thread's end must not take the server down. It prints its children, then waits.
PARENT = """
import json, sys, threading
from pathlib import Path
from lowtide.testing.harness import Lowtide, Upstream

workdir = Path(sys.argv[1])
upstream = Upstream("--no-parent-watch", log=workdir / "upstream.log")
server = Lowtide(workdir, sys.argv[2].replace("UPSTREAM", upstream.base_url))
starter = threading.Thread(target=server.start)
starter.start()
starter.join()
assert server.proc is not None
pids = {"upstream": upstream.proc.pid, "lowtide": server.proc.pid}
print(json.dumps({"url": server.url, "pids": pids}), flush=True)
threading.Event().wait()
"""

CONFIG = """
[[api_keys]]
key = "sk-test-harness-0001"
account = "harness"

[[backends]]
name = "fake"
base_url = "UPSTREAM"
api_key = "EMPTY"
models = ["fake-model"]
"""


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None once it is gone.

    A zombie counts as gone: it runs nothing and holds no port; whether and when it is reaped
    depends on the machine's init. The start time tells a reused pid from the child."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    state, start = after_name[0], after_name[19]
    return None if state in ("Z", "X") else start


def _gone_within(children: dict[str, tuple[int, str]], seconds: float) -> list[str]:
    """The names of the children still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        left = [n for n, (pid, start) in children.items() if _start_time(pid) == start]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_children_die_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    log = tmp_path / "parent.log"
    with log.open("wb") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(tmp_path), CONFIG],
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    children: dict[str, tuple[int, str]] = {}
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, log.read_text()
        started = json.loads(line)
        for name, pid in started["pids"].items():
            start = _start_time(pid)
            assert start is not None, f"{name} is not running"
            children[name] = (pid, start)

        # The thread that started it has ended, yet the server still runs and answers.
        time.sleep(0.5)
        assert _start_time(children["lowtide"][0]) == children["lowtide"][1]
        http_json(started["url"] + "/ready")

        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone_within(children, 5.0) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid, start in children.values():
            if _start_time(pid) == start:
                os.kill(pid, signal.SIGKILL)  # leave no children of a failed run behind


def test_a_killed_child_can_be_restarted(tmp_path: Path) -> None:
    """What the chaos script does: its own SIGKILL of a child is not the parent's death."""
    upstream = Upstream(log=tmp_path / "upstream.log")
    server = Lowtide(tmp_path, CONFIG.replace("UPSTREAM", upstream.base_url))
    try:
        server.start()
        first = server.proc
        server.restart()
        assert first is not None and first.returncode == -signal.SIGKILL
        assert server.proc is not None and server.proc.pid != first.pid
        assert http_json(server.url + "/ready") is not None
    finally:
        server.stop()
        upstream.stop()
