"""The simulated engine in a child process, so that it has its own CPU as a real engine has."""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

import orjson

from lowtide.testing.engine_sim.cli import LISTENING
from lowtide.testing.engine_sim.config import EngineConfig
from lowtide.testing.harness import HOST, http_json, spawn


class SimEngineProcess:
    """``with SimEngineProcess(EngineConfig(max_seqs=32)) as eng: eng.url``.

    The child dies with this process (``lowtide.testing.harness.spawn``); ``stop`` ends it.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        log: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.config = config or EngineConfig()
        self._argv = [
            sys.executable,
            "-m",
            "lowtide.testing.engine_sim",
            "--host",
            HOST,
            "--port",
            "0",
            "--config-json",
            orjson.dumps(self.config.to_dict()).decode(),
        ]
        self._log = log
        self._timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the simulated engine is not running")
        return self.proc.pid

    def start(self) -> str:
        stderr: IO[bytes] | int = self._log.open("ab") if self._log else subprocess.DEVNULL
        try:
            self.proc = spawn(self._argv, stdout=subprocess.PIPE, stderr=stderr)
        finally:
            if not isinstance(stderr, int):
                stderr.close()  # the child has its own copy
        try:
            self.url = _ready_url(self.proc, self._timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stats(self, *, records: bool = False) -> dict[str, Any]:
        query = "?records=1" if records else ""
        return cast(dict[str, Any], http_json(f"{self.url}/_sim/stats{query}", timeout=60.0))

    def reset(self, *, cache: bool = False) -> None:
        http_json(f"{self.url}/_sim/reset", {"cache": cache})

    def __enter__(self) -> SimEngineProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _ready_url(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The url of the child's ``LISTENING <url>`` line; earlier lines are skipped."""
    stdout = proc.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            line = stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"the simulated engine exited with status {proc.wait()}")
            if line.startswith(LISTENING):
                return line.removeprefix(LISTENING).strip().rstrip("/")
    raise TimeoutError(f"the simulated engine did not start within {timeout:g}s")
