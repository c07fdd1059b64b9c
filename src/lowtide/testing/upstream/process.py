"""The fake upstream in a child process, and the ``LISTENING <url>`` line it starts with."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import orjson

from lowtide.testing import serving
from lowtide.testing.children import read_ready_line
from lowtide.testing.upstream.config import UpstreamConfig, require_loopback

LISTENING = serving.LISTENING  # the first line the process prints, before the url it listens on


class UpstreamProcess(serving.ServerProcess):
    """The fake upstream in a child process, so it has its own CPU like a real backend.

    ``with UpstreamProcess(UpstreamConfig(latency=0.01)) as proc: proc.url``. Change it at
    run time through ``POST {url}/_fake/config``; read it through ``GET {url}/_fake/stats``.
    The child dies with this process (see ``lowtide.testing.children.spawn``).
    """

    what = "the fake upstream"

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
        argv = [
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
        # Its stderr is this process's: a test that fails shows why the fake did.
        super().__init__(argv, startup_timeout=startup_timeout, inherit_stderr=True)


def read_listening(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Wait for the child's ``LISTENING <url>`` line and return the url.

    Raises RuntimeError if the child exits (or closes its stdout) first, TimeoutError if the
    line does not come within ``timeout`` seconds.
    """
    return read_ready_line(proc, LISTENING, timeout, what="the fake upstream")
