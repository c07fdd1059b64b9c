"""Start the real processes on loopback: a fake upstream, ``lowtide serve``, ``lowtide worker``.

Shared by the acceptance tests, the benchmarks and the chaos script, so that all of them
drive the same thing a user runs. Every process started here dies with the process that started
it, even when that one is SIGKILLed (a test timeout, a killed benchmark), and leads a process
group that ``stop`` ends whole: see ``lowtide.testing.children``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson

from lowtide.testing.children import (
    end,
    ending_children,
    read_ready_line,
    run,
    spawn,
    unmeasured_env,
)

__all__ = [
    "HOST",
    "Lowtide",
    "Upstream",
    "Worker",
    "end",
    "ending_children",
    "free_port",
    "http_json",
    "run",
    "spawn",
]

HOST = "127.0.0.1"
#: Seconds a started process has to say it is ready. Only turns a process that never gets ready
#: into an error: on a loaded two-core machine, with coverage measuring it, a server's start
#: has taken more than 20 s.
STARTUP_TIMEOUT = 60.0
# The first line ``python -m lowtide.testing.upstream`` prints, before the url it listens on.
# (Not imported from there: this module stays light, without aiohttp.)
_LISTENING = "LISTENING "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_json(url: str, body: Any = None, *, timeout: float = 10.0) -> Any:
    """A tiny loopback JSON client for control routes (no SDK needed)."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if data else "GET",
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return orjson.loads(resp.read())


class Upstream:
    """The fake OpenAI-compatible server (``lowtide.testing.upstream``) as a process."""

    def __init__(
        self, *args: str, log: Path | None = None, startup_timeout: float = STARTUP_TIMEOUT
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "lowtide.testing.upstream",
            "--host",
            HOST,
            "--port",
            "0",
            *args,
        ]
        stderr = log.open("ab") if log else subprocess.DEVNULL
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=stderr, env=unmeasured_env())
        try:
            line = read_ready_line(self.proc, _LISTENING, startup_timeout, what="fake upstream")
            self.url = line.rstrip("/")
        except BaseException:
            end(self.proc, 5.0)
            raise

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stats(self, per_key: bool = False) -> dict[str, Any]:
        return cast(
            dict[str, Any], http_json(self.url + "/_fake/stats" + ("?per_key=1" if per_key else ""))
        )

    def configure(self, **changes: Any) -> None:
        http_json(self.url + "/_fake/config", changes)

    def reset(self) -> None:
        http_json(self.url + "/_fake/reset", {})

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL it after 5 s."""
        end(self.proc, 5.0)


class _Process:
    """Signals and clean-up shared by the processes the harness starts."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain what is in flight, give back leases, exit); the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash that durability is about; leases stay until they run out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: frozen with its sockets open, as a VM stall or a long GC pause would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM its process group (drain, exit), SIGKILL it after 30 s."""
        if self.proc is not None:
            end(self.proc, 30.0)


class Lowtide(_Process):
    """``lowtide serve`` as a process, with a config file written from a TOML string."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "lowtide.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / "lowtide.log"
        self.env = {**os.environ, "LOWTIDE_TESTING": "1", **(env or {})}
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        cmd = [
            sys.executable,
            "-m",
            "lowtide",
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.workdir / "data"),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.proc = spawn(cmd, stdout=log, stderr=log, env=self.env, cwd=self.workdir)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"lowtide exited with {self.proc.returncode}:\n{self.log()}")
            try:
                http_json(self.url + "/ready", timeout=1.0)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"lowtide did not become ready:\n{self.log()}")

    def restart(self) -> None:
        self.kill()
        self.start()


class Worker(_Process):
    """``lowtide worker`` as a process: an engine without the API, for a fleet on PostgreSQL.

    It serves no HTTP, so it counts as started when its log says so. ``config_path`` is a
    config file shared with the rest of the fleet (``Lowtide(...).config_path`` will do).
    """

    STARTED = re.compile(r"\bworker \S+ started$")  # what cli/worker.py logs when ready

    def __init__(
        self,
        workdir: Path,
        config_path: Path,
        *,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.config_path = config_path
        self.extra_args = list(extra_args)
        self.log_path = workdir / "worker.log"
        self.env = {**os.environ, "LOWTIDE_TESTING": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the worker is not running"
        return self.proc.pid

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "lowtide", "worker", "--config", str(self.config_path)]
        cmd += self.extra_args
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = spawn(cmd, stdout=log, stderr=log, env=self.env, cwd=self.workdir)
        self._wait_started(offset, timeout)

    def _wait_started(self, offset: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if any(self.STARTED.search(line) for line in self.log()[offset:].splitlines()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start:\n{self.log()}")

    def owner_prefix(self) -> str:
        """The start of the engine's owner name (``host:pid:``) in leases and slot rows."""
        return f"{socket.gethostname()}:{self.pid}:"
