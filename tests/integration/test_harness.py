"""The harness's children die with the process that started them, and only then.

A parent that is SIGKILLed (a test timeout, a killed benchmark) runs no clean-up, so nothing
but the kernel can stop the ``lowtide serve`` and fake upstream it started. A script that ends
otherwise (Ctrl-C, SIGTERM, an exception) ends its children's whole process groups itself.
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

from lowtide.testing.harness import Lowtide, Upstream, end, http_json, spawn

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

# The parent: a fake upstream (with its own parent watch off, so that only the harness's guard
# can stop it) and a lowtide started from a thread that has ended before the parent is killed:
# that thread's end must not take the server down. It prints its children, then waits.
PARENT = """
import json, sys, threading, time
from pathlib import Path
from lowtide.testing.harness import Lowtide, Upstream

workdir = Path(sys.argv[1])
upstream = Upstream("--no-parent-watch", log=workdir / "upstream.log")
server = Lowtide(workdir, sys.argv[2].replace("UPSTREAM", upstream.base_url))
starter = threading.Thread(target=server.start)
starter.start()
starter.join()
# join() returns when the thread's Python code is done, a moment before the kernel ends the
# thread, which is when a child it had forked would get its parent-death signal.
task, deadline = Path(f"/proc/self/task/{starter.native_id}"), time.monotonic() + 30
while task.exists():
    assert time.monotonic() < deadline, "the starter thread did not end"
    time.sleep(0.01)
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


def _gone_within(children: dict[str, tuple[int, str]], seconds: float = 30.0) -> list[str]:
    """The names of the children still running after ``seconds`` (polled: gone sooner, the
    answer comes sooner)."""
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

        # The thread that started it has ended (the parent waited for the kernel's thread to
        # be gone), yet the server still runs and answers: a child killed at that thread's end
        # would have had its SIGKILL by now, and could not answer.
        http_json(started["url"] + "/ready")
        assert _start_time(children["lowtide"][0]) == children["lowtide"][1]

        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        assert _gone_within(children) == []
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


# A child that starts a grandchild of its own (in its process group, without the parent-death
# guard) and prints the grandchild's pid: only ending the whole group ends the grandchild.
FAMILY = (
    "import subprocess, sys;"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
    "print(g.pid, flush=True); g.wait()"
)

# A script as the benchmarks are: its main inside ending_children(). It prints its child's and
# grandchild's pids and the fake upstream's, then waits to be interrupted.
SCRIPT = """
import json, subprocess, sys, threading
from lowtide.testing.harness import Upstream, ending_children, spawn

with ending_children():
    child = spawn([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
    grandchild = int(child.stdout.readline())
    upstream = Upstream()
    pids = {"child": child.pid, "grandchild": grandchild, "upstream": upstream.proc.pid}
    print(json.dumps(pids), flush=True)
    threading.Event().wait()
"""


def _running(pids: dict[str, int]) -> dict[str, tuple[int, str]]:
    running = {name: (pid, _start_time(pid)) for name, pid in pids.items()}
    assert all(start is not None for _, start in running.values()), running
    return {name: (pid, start) for name, (pid, start) in running.items() if start is not None}


def test_end_takes_the_whole_process_group() -> None:
    child = spawn([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE)
    family: dict[str, tuple[int, str]] = {}
    try:
        assert child.stdout is not None
        family = _running({"child": child.pid, "grandchild": int(child.stdout.readline())})
        assert end(child, timeout=30) == -signal.SIGTERM
        assert _gone_within(family) == []
    finally:
        _kill_leftovers(family)
        end(child)
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_script_ends_its_children_groups_when_interrupted(sig: signal.Signals) -> None:
    script = spawn([sys.executable, "-c", SCRIPT, FAMILY], stdout=subprocess.PIPE)
    children: dict[str, tuple[int, str]] = {}
    try:
        assert script.stdout is not None
        line = script.stdout.readline()
        assert line, "the script printed nothing"
        children = _running(json.loads(line))
        script.send_signal(sig)
        status = script.wait(60)
        # Ctrl-C: the script dies of the SIGINT it re-raises; SIGTERM: it exits 128 + 15.
        assert status == (-signal.SIGINT if sig == signal.SIGINT else 128 + signal.SIGTERM)
        # The grandchild has no parent-death guard: only the script's own clean-up ends it.
        assert _gone_within(children) == []
    finally:
        _kill_leftovers(children)
        end(script)
        if script.stdout is not None:
            script.stdout.close()


@pytest.mark.measure_children
def test_no_child_is_started_once_a_script_is_ending_its_children() -> None:
    code = (
        "from lowtide.testing.harness import ending_children, spawn\n"
        "with ending_children():\n    pass\n"
        "try:\n    spawn(['true'])\nexcept RuntimeError as exc:\n    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused: ")


def _kill_leftovers(children: dict[str, tuple[int, str]]) -> None:
    """Leave no process of a failed run behind."""
    for pid, start in children.values():
        if _start_time(pid) == start:
            os.kill(pid, signal.SIGKILL)
