"""The simulated engine in a child process, so that it has its own CPU as a real engine has."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import orjson

from lowtide.testing.engine_sim.config import EngineConfig
from lowtide.testing.harness import HOST, http_json
from lowtide.testing.serving import ServerProcess


class SimEngineProcess(ServerProcess):
    """``with SimEngineProcess(EngineConfig(max_seqs=32)) as eng: eng.url``.

    The child dies with this process (``lowtide.testing.harness.spawn``); ``stop`` ends it.
    """

    what = "the simulated engine"

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        log: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.config = config or EngineConfig()
        argv = [
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
        super().__init__(argv, startup_timeout=startup_timeout, log=log)

    def stats(self, *, records: bool = False) -> dict[str, Any]:
        query = "?records=1" if records else ""
        return cast(dict[str, Any], http_json(f"{self.url}/_sim/stats{query}", timeout=60.0))

    def reset(self, *, cache: bool = False) -> None:
        http_json(f"{self.url}/_sim/reset", {"cache": cache})
