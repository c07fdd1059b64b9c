"""The command line as a user drives it: ``lowtide ...`` subprocesses against a running server
and the fake upstream, and ``lowtide run`` with no server (killed and resumed).

One server and one upstream serve the client tests of this module (started once: each start
costs a second); ``lowtide run`` gets an upstream of its own, since it turns the latency up.
Here are what needs a process: Ctrl-C, a terminal, a kill, and one command of each kind run
the way a user runs it. What each client command prints and its exit code are checked in
this process, a hundred times cheaper, in tests/integration/test_cli_client.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.children import unmeasured_env
from lowtide.testing.harness import Lowtide, Upstream
from tests.support.batches import read_jsonl, write_jsonl
from tests.support.commands import base_env, run
from tests.support.served import serving

from .conftest import ALICE, chat_line, config_toml

FAST_POLL = ("--poll-interval", "0.1")
ANSI = "\x1b["


# --------------------------------------------------------------------------- helpers


def lowtide(
    *args: str | Path, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "lowtide", *map(str, args)], env=env, cwd=cwd, timeout=timeout
    )


def start(*args: str | Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lowtide", *map(str, args)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def content_of(line: dict[str, Any]) -> str:
    return str(line["response"]["body"]["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lowtide, Upstream]]:
    with serving(tmp_path_factory.mktemp("cli-server")) as started:
        yield started


@pytest.fixture
def env(live: tuple[Lowtide, Upstream]) -> dict[str, str]:
    server, _ = live
    # The server's root URL: the client adds /v1 itself.
    return {**base_env(), "LOWTIDE_BASE_URL": server.url, "LOWTIDE_API_KEY": ALICE}


# --------------------------------------------------------------------------- client commands


@pytest.fixture
def storm(live: tuple[Lowtide, Upstream]) -> Iterator[None]:
    """The upstream answers every request 429 + Retry-After while the test runs: lines wait
    (no attempt spent) and a batch cannot end on its own, however slow the machine is."""
    _, upstream = live
    upstream.configure(storm_seconds=3600)
    try:
        yield
    finally:
        upstream.configure(storm_seconds=0)


@pytest.mark.slow
def test_ctrl_c_then_cancel_wait_download_exit_codes(
    env: dict[str, str], tmp_path: Path, storm: None
) -> None:
    lines = [chat_line(f"s-{i}", f"question {i}") for i in range(40)]
    write_jsonl(tmp_path / "held.jsonl", lines)
    batch_id = lowtide("batch", "submit", "held.jsonl", env=env, cwd=tmp_path).stdout.strip()

    waiting = start("batch", "wait", batch_id, *FAST_POLL, env=env, cwd=tmp_path)
    assert waiting.stderr is not None
    first = waiting.stderr.readline()  # the first progress line: it is waiting now
    assert batch_id in first and ("in_progress" in first or "validating" in first), first
    waiting.send_signal(signal.SIGINT)
    _, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 130, stderr
    assert f"lowtide batch wait {batch_id}" in stderr and "Traceback" not in stderr

    # Ctrl-C stopped the waiting, not the batch.
    early = lowtide("batch", "download", batch_id, env=env, cwd=tmp_path)
    assert early.returncode == 1 and "lowtide batch wait" in early.stderr
    cancelled = lowtide("batch", "cancel", batch_id, "--json", env=env, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")
    waited = lowtide("batch", "wait", batch_id, *FAST_POLL, "--json", env=env, cwd=tmp_path)
    assert waited.returncode == 5, waited.stderr
    assert json.loads(waited.stdout)["status"] == "cancelled"

    got = lowtide("batch", "download", batch_id, "-o", "out.jsonl", env=env, cwd=tmp_path)
    assert got.returncode == 5
    # Every line is in one of the files; the ones never run say so.
    outputs, errors = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(r["custom_id"] for r in outputs + errors) == sorted(x["custom_id"] for x in lines)
    assert any(e["error"]["code"] == "batch_cancelled" for e in errors)


def test_ctrl_c_during_the_first_request_exits_130(tmp_path: Path) -> None:
    # A server that takes the request and never answers: once it has the request, the command
    # is inside its first request, wherever the machine's speed put that moment.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        # Were the command to miss the signal, SIGABRT would show where each thread stood.
        env = {**base_env(), "LOWTIDE_BASE_URL": url, "PYTHONFAULTHANDLER": "1"}
        waiting = start("batch", "wait", "batch_x", env=env, cwd=tmp_path)
        with _request_for(silent, b"GET /v1/batches/batch_x "):
            waiting.send_signal(signal.SIGINT)
            try:
                _, stderr = waiting.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                waiting.send_signal(signal.SIGABRT)
                pytest.fail("no exit 60 s after Ctrl-C:\n" + waiting.communicate()[1])
    assert waiting.returncode == 130, stderr
    assert "Traceback" not in stderr


def _request_for(silent: socket.socket, start: bytes) -> socket.socket:
    """The connection whose request begins with ``start``, read to the end of its headers. Any
    other is closed and the wait goes on: the port may have been another test's server's a
    moment ago, with a client of that server still retrying it."""
    while True:
        connection, _ = silent.accept()
        connection.settimeout(60)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
            received += chunk
        if received.startswith(start):
            return connection
        connection.close()


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2, 0.4])
def test_ctrl_c_while_starting_exits_130(tmp_path: Path, delay: float) -> None:
    # Ctrl-C while the command is still importing or parsing its arguments: 130, quietly, and
    # never a wait for ever (the silent server would hold a command that missed the signal).
    # A signal that lands before any of lowtide's code runs, while the interpreter itself
    # starts, ends it the interpreter's way: killed by SIGINT (the shell shows 130 too), or 1
    # with "Could not import runpy module"; its traceback then shows no frame of lowtide.
    # Without coverage's start-up in the child: the .pth file that starts it imports coverage
    # under a bare `except: pass`, which swallows an interrupt that lands there (the command
    # then waits for the silent server for ever). That is the test run's scaffolding, not
    # lowtide; with it, 5 runs in 5 hung at 0.05 s on a loaded machine.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = unmeasured_env(base_env())
        env["LOWTIDE_BASE_URL"] = f"http://127.0.0.1:{silent.getsockname()[1]}"
        waiting = start("batch", "wait", "batch_x", env=env, cwd=tmp_path)
        time.sleep(delay)  # not a wait for anything: the moment of the signal varies on purpose
        waiting.send_signal(signal.SIGINT)
        _, stderr = waiting.communicate(timeout=60)
    if waiting.returncode == 130:
        assert "Traceback" not in stderr
    else:
        assert waiting.returncode in (1, -signal.SIGINT), (waiting.returncode, stderr)
        assert "/lowtide/" not in stderr, stderr  # no frame of lowtide: it had not started


# Python drops an exception raised inside a weak-reference callback (the import machinery runs
# some), so a Ctrl-C handled there never reaches the command; this one is handled there on purpose,
# as the command starts. The atexit line shows that the command ended the normal way, not by the
# watchdog's os._exit, five seconds later.
_CTRL_C_IN_A_CALLBACK = """
import atexit, signal, sys, weakref
from lowtide.cli import main
import lowtide.cli.commands as commands  # the module of the commands: main() looks up its cli

class Referent:
    pass

def interrupt(_ref):
    signal.raise_signal(signal.SIGINT)

def cli(**kwargs):
    weakref.ref(Referent(), interrupt)  # the referent dies at once: the callback runs here
    real_cli(**kwargs)

real_cli, commands.cli = commands.cli, cli
atexit.register(print, "ended by main")
sys.argv = ["lowtide", "batch", "wait", "batch_x"]
main()
"""


@pytest.mark.measure_children
def test_ctrl_c_dropped_inside_a_callback_still_ends_the_command(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = {
            **base_env(),
            "LOWTIDE_API_KEY": "sk-any",
            "LOWTIDE_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        }
        ended = subprocess.run(
            [sys.executable, "-c", _CTRL_C_IN_A_CALLBACK],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert ended.returncode == 130, ended.stderr
    assert "Exception ignored" not in ended.stderr and "Traceback" not in ended.stderr
    assert ended.stdout == "ended by main\n"


class _ClosedPort:
    """A backend address where nothing listens."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


@pytest.mark.slow
@pytest.mark.measure_children
def test_a_backend_that_cannot_be_reached_is_shown_by_the_commands(tmp_path: Path) -> None:
    server = Lowtide(tmp_path, config_toml(_ClosedPort()))  # type: ignore[arg-type]
    server.start()
    try:
        env = {**base_env(), "LOWTIDE_BASE_URL": server.url, "LOWTIDE_API_KEY": ALICE}
        deadline = time.monotonic() + 60
        while "down" not in (listed := lowtide("backends", env=env, cwd=tmp_path)).stdout:
            assert time.monotonic() < deadline, listed
            time.sleep(0.1)
        assert "fake" in listed.stdout and "Cannot connect to host 127.0.0.1" in listed.stdout
        write_jsonl(tmp_path / "in.jsonl", [chat_line("w-1", "waiting")])
        batch_id = lowtide("batch", "submit", "in.jsonl", env=env, cwd=tmp_path).stdout.strip()
        while (
            "waiting:"
            not in (shown := lowtide("batch", "get", batch_id, env=env, cwd=tmp_path)).stdout
        ):
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert "waiting:        backend fake: " in shown.stdout and "Cannot connect" in shown.stdout
        assert "backend:" in shown.stdout and "fake down, limit 16" in shown.stdout
        waiting = start("batch", "wait", batch_id, *FAST_POLL, env=env, cwd=tmp_path)
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
        waiting.send_signal(signal.SIGINT)
        waiting.communicate(timeout=60)
        assert "waiting for backend fake: " in line and "Cannot connect" in line
    finally:
        server.stop()


# --------------------------------------------------------------------------- lowtide run


def ids_by_state(state: Path) -> dict[int, set[str]]:
    """custom_ids of the killed run's requests by state: 1 leased, 2 and 3 recorded."""
    with contextlib.closing(sqlite3.connect(state / "lowtide.db")) as db:
        rows = db.execute("SELECT state, custom_id FROM requests").fetchall()
    found: dict[int, set[str]] = {0: set(), 1: set(), 2: set(), 3: set()}
    for request_state, custom_id in rows:
        found[request_state].add(custom_id)
    return found


def wait_for_requests(upstream: Upstream, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while upstream.stats()["requests"] < count:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.measure_children
def test_run_interrupted_then_killed_resumes_each_line_once(tmp_path: Path) -> None:
    # 0.1 s a request, 4 at a time: the first run, interrupted at a sixth of the lines, still
    # has seconds of work left when the test's Ctrl-C comes, even on a loaded machine.
    upstream = Upstream("--seed", "7", "--latency", "0.1", log=tmp_path / "upstream.log")
    try:
        (tmp_path / "lowtide.toml").write_text(config_toml(upstream, max_concurrency=4))
        n = 300
        lines = [chat_line(f"k-{i}", f"question {i}") for i in range(n)]
        lines[10] = chat_line("k-10", "question 10 FAIL400")  # one line for the error file
        write_jsonl(tmp_path / "in.jsonl", lines)
        args = ("run", "in.jsonl", "-o", "out.jsonl", "--config", "lowtide.toml")

        # Ctrl-C: the engine stops gracefully and says how to resume.
        first = start(*args, env=base_env(), cwd=tmp_path)
        wait_for_requests(upstream, n // 6, first)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
        assert first.returncode == 130, stderr
        assert "Run the same command again to resume" in stderr

        # Then a crash: SIGKILL, a third of the way through.
        second = start(*args, env=base_env(), cwd=tmp_path)
        wait_for_requests(upstream, n // 3, second)
        # From here the upstream answers nothing, so the run cannot finish before the kill,
        # however long the rival below takes to start; what it has in flight stays leased.
        upstream.configure(hang_rate=1.0)
        # One run at a time per state directory: two engines on it would send lines twice.
        rival = lowtide(*args, env=base_env(), cwd=tmp_path)
        assert rival.returncode == 1 and "another `lowtide run`" in rival.stderr
        second.kill()
        second.wait()
        upstream.configure(hang_rate=0.0)

        state = tmp_path / "out.jsonl.lowtide-state"
        at_kill = ids_by_state(state)
        recorded, leased = at_kill[2] | at_kill[3], at_kill[1]
        before = upstream.stats(per_key=True)["per_key"]
        assert 0 < len(recorded) < n

        third = lowtide(*args, env=base_env(), cwd=tmp_path)
        assert third.returncode == 0, third.stderr
        assert "resuming" in third.stderr

        outputs, errors = (
            read_jsonl(tmp_path / "out.jsonl"),
            read_jsonl(tmp_path / "out.errors.jsonl"),
        )
        seen = [r["custom_id"] for r in outputs + errors]
        assert sorted(seen) == sorted(line["custom_id"] for line in lines)  # each exactly once
        assert [e["custom_id"] for e in errors] == ["k-10"]
        assert all(content_of(o) == "echo: question " + o["custom_id"][2:] for o in outputs)
        assert not state.exists()

        after = upstream.stats(per_key=True)["per_key"]
        key_of = {line["custom_id"]: line["body"]["messages"][-1]["content"] for line in lines}
        resent = [c for c in recorded if after[key_of[c]] != before[key_of[c]]]
        assert resent == [], "a line recorded before the kill was sent again"
        # Sent again: only what was in flight (leased, its result not yet committed) at the kill.
        sent_twice = {c for c in key_of if after[key_of[c]] > 1}
        assert sent_twice <= leased
    finally:
        upstream.stop()


@pytest.mark.measure_children
def test_run_refuses_a_changed_input(tmp_path: Path) -> None:
    state = tmp_path / "out.jsonl.lowtide-state"
    state.mkdir()
    (state / "run.json").write_text(json.dumps({"sha256": "0" * 64}))
    write_jsonl(tmp_path / "in.jsonl", [model_line(0)])
    result = lowtide("run", "in.jsonl", "-o", "out.jsonl", env=base_env(), cwd=tmp_path)
    assert result.returncode == 1 and "different input" in result.stderr


def model_lines(n: int) -> list[dict[str, Any]]:
    return [model_line(i) for i in range(n)]


def model_line(i: int) -> dict[str, Any]:
    return chat_line(f"t-{i}", f"hi {i}", model="batch-test-model", url="/v1/chat/ds-test")


def test_run_plain_lines_when_piped(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", model_lines(50))
    result = lowtide("run", "in.jsonl", "-o", "out.jsonl", env=base_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ANSI not in result.stderr and "\r" not in result.stderr
    assert "in.jsonl: completed, 50 done, 0 failed, 50 total" in result.stderr.splitlines()
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 50


def run_in_terminal(args: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run under a pseudo-terminal of 120 columns; return the exit code and all it wrote."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {**base_env(), "TERM": "xterm-256color"}
    env.pop("NO_COLOR")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowtide", *args],
        stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=env,
    )  # fmt: skip
    os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(10), out.decode(errors="replace")


@pytest.mark.measure_children
def test_run_progress_bar_in_a_terminal(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "in.jsonl", model_lines(100))
    code, screen = run_in_terminal(["run", "in.jsonl", "-o", "out.jsonl"], tmp_path)
    assert code == 0, screen
    assert ANSI in screen and "\r" in screen  # redrawn in place
    assert "━" in screen  # the bar
    assert "100 done · 0 failed · 100 total" in screen
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 100
