"""The fake upstream in a child process, and the ``LISTENING <url>`` line it starts with."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType

import orjson

from lowtide.testing.children import end, read_ready_line, spawn
from lowtide.testing.upstream.config import UpstreamConfig, require_loopback

LISTENING = "LISTENING "  # the first line the process prints, before the url it listens on


class UpstreamProcess:
    """The fake upstream in a child process, so it has its own CPU like a real backend.

    ``with UpstreamProcess(UpstreamConfig(latency=0.01)) as proc: proc.url``. Change it at
    run time through ``POST {url}/_fake/config``; read it through ``GET {url}/_fake/stats``.
    The child dies with this process (see ``lowtide.testing.children.spawn``).
    """

    def __init__(
        self,
        config: UpstreamConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        require_loopback(host)
        self._argv = [
            sys.executable,
            "-m",
            "lowtide.testing.upstream",
            "--host",
            host,
            "--port",
            str(port),
            "--config-json",
            orjson.dumps((config or UpstreamConfig()).to_dict()).decode(),
            *extra_args,
        ]
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the fake upstream process is not running")
        return self._proc.pid

    def start(self) -> str:
        self._proc = spawn(self._argv, stdout=subprocess.PIPE)
        try:
            self.url = read_listening(self._proc, self._timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        end(proc, timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> UpstreamProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_listening(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for the child's ``LISTENING <url>`` line and return the url.

    Raises RuntimeError if the child exits (or closes its stdout) first, TimeoutError if the
    line does not come within ``timeout`` seconds.
    """
    return read_ready_line(proc, LISTENING, timeout, what="the fake upstream")
