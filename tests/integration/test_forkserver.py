"""The fork server's children are the processes an exec would have started, as seen from outside:
process group, signal dispositions, working directory, environment, output, exit status; and
it forks only the children that could not tell the difference.

One difference is known and left: ``/proc/<pid>/environ`` (and ``cmdline``) show what the server
was exec'd with, since a process changes its own environment in its memory only; the child's
``os.environ`` and ``getenv`` have what it was given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowtide.testing.children import live_children_of, read_ready_line, unmeasured_env
from lowtide.testing.forkserver import ForkServer, PreloadedChild, client
from lowtide.testing.harness import http_json

UPSTREAM = [sys.executable, "-m", "lowtide.testing.upstream", "--host", "127.0.0.1", "--port", "0"]


@pytest.fixture
def server() -> Iterator[ForkServer]:
    forks = ForkServer(subprocess.Popen, unmeasured_env())
    yield forks
    forks.close()


def _status_fields(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _start_upstream(start: object, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "env": env, "cwd": cwd}
    if isinstance(start, ForkServer):
        return start.spawn(UPSTREAM, options)
    return subprocess.Popen(UPSTREAM, process_group=0, stdin=subprocess.DEVNULL, **options)


def test_a_forked_child_looks_like_an_execd_one(server: ForkServer, tmp_path: Path) -> None:
    forked = _start_upstream(server, unmeasured_env(), tmp_path)
    execd = _start_upstream(None, unmeasured_env(), tmp_path)
    try:
        assert isinstance(forked, PreloadedChild)
        for proc in (forked, execd):
            url = read_ready_line(proc, "LISTENING ", 60.0)
            assert http_json(url.rstrip("/") + "/_fake/stats")["requests"] == 0
            assert os.getpgid(proc.pid) == proc.pid  # leads its own group
            assert Path(f"/proc/{proc.pid}/cwd").resolve() == tmp_path.resolve()
        seen = [_status_fields(p.pid) for p in (forked, execd)]
        for field in ("SigIgn", "SigBlk"):
            assert seen[0][field] == seen[1][field], field
        assert int(seen[0]["PPid"]) == server.proc.pid
        for proc in (forked, execd):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
    finally:
        for proc in (forked, execd):
            proc.kill()
            proc.wait()


def test_output_and_exit_statuses_are_the_modules(server: ForkServer, tmp_path: Path) -> None:
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "cwd": tmp_path}
    version = server.spawn([sys.executable, "-m", "lowtide", "--version"], options)
    out, err = version.communicate(timeout=60)
    assert (version.returncode, out.startswith(b"lowtide, version "), err) == (0, True, b"")

    # The environment it was given: the client's URL comes from it.
    nowhere = {**unmeasured_env(), "LOWTIDE_BASE_URL": "http://127.0.0.1:9/v1"}
    unreachable = server.spawn(
        [sys.executable, "-m", "lowtide", "batch", "list"], {**options, "env": nowhere}
    )
    out, err = unreachable.communicate(timeout=60)
    assert unreachable.returncode == 1
    assert b"cannot reach http://127.0.0.1:9/v1" in err

    wrong = server.spawn([sys.executable, "-m", "lowtide", "no-such-command"], options)
    out, err = wrong.communicate(timeout=60)
    assert wrong.returncode == 2
    assert b"No such command 'no-such-command'" in err

    killed = _start_upstream(server, unmeasured_env(), tmp_path)
    read_ready_line(killed, "LISTENING ", 60.0)
    killed.kill()
    assert killed.wait(30) == -signal.SIGKILL
    assert killed.poll() == -signal.SIGKILL


def test_children_die_with_the_server(tmp_path: Path) -> None:
    forks = ForkServer(subprocess.Popen, unmeasured_env())
    try:
        child = _start_upstream(forks, unmeasured_env(), tmp_path)
        read_ready_line(child, "LISTENING ", 60.0)
        assert [pid for pid, _ in live_children_of(forks.proc.pid)] == [child.pid]
    finally:
        forks.close()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # reaped by init once the kernel's SIGKILL lands
    assert not Path(f"/proc/{child.pid}").exists()
    assert child.wait(0) == -signal.SIGKILL


def test_it_forks_only_what_could_not_tell(server: ForkServer) -> None:
    plain = [sys.executable, "-m", "lowtide", "--version"]
    env = unmeasured_env()
    assert server.takes(plain, {"env": env, "stdout": subprocess.PIPE})
    assert server.takes(plain, {"env": {**env, "PYTHONUNBUFFERED": "1"}})  # set up in the child
    assert not server.takes([sys.executable, "-c", "pass"], {"env": env})
    assert not server.takes([sys.executable, "-m", "json.tool"], {"env": env})
    assert not server.takes(["lowtide", "--version"], {"env": env})
    assert not server.takes(plain, {"env": env, "pass_fds": (3,)})
    assert not server.takes(plain, {"env": {**env, "PYTHONHASHSEED": "7"}})
    assert not server.takes(plain, {"env": {**env, "MALLOC_ARENA_MAX": "2"}})
    # A child that coverage is to measure starts with the interpreter, so it is exec'd.
    assert not server.takes(plain, {"env": {**env, "COVERAGE_PROCESS_START": "pyproject.toml"}})


def test_an_import_that_fails_is_the_childs_error_not_the_servers(
    server: ForkServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a module needs is imported when its first child is asked for: a failure there is
    # that request's error, and the server goes on serving the others.
    broken = {**client.RUNNABLE, "lowtide.testing.upstream": ("lowtide.no_such_module",)}
    monkeypatch.setattr(client, "RUNNABLE", broken)
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "cwd": tmp_path}
    with pytest.raises(OSError, match=r"No module named 'lowtide\.no_such_module'"):
        server.spawn(UPSTREAM, options)
    version = server.spawn([sys.executable, "-m", "lowtide", "--version"], options)
    out, _ = version.communicate(timeout=60)
    assert (version.returncode, out.startswith(b"lowtide, version ")) == (0, True)
