"""The fake hosted Batch API in a child process that dies with its parent
(``lowtide.testing.children``), for the acceptance tier and the chaos script."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, cast

import orjson

from lowtide.testing.batch_api.state import BatchApiConfig
from lowtide.testing.harness import http_json
from lowtide.testing.serving import ServerProcess


class BatchApiProcess(ServerProcess):
    """Started as it is made; ``stop`` ends it."""

    what = "fake Batch API"

    def __init__(
        self,
        config: BatchApiConfig | None = None,
        *,
        log: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "lowtide.testing.batch_api",
            "--config-json",
            orjson.dumps(dataclasses.asdict(config or BatchApiConfig())).decode(),
        ]
        super().__init__(cmd, startup_timeout=timeout, log=log)
        self.start()

    def stats(self, per_key: bool = False) -> dict[str, Any]:
        suffix = "?per_key=1" if per_key else ""
        return cast(dict[str, Any], http_json(self.url + "/_fake/stats" + suffix))

    def batches(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], http_json(self.url + "/_fake/batches")["data"])

    def configure(self, **changes: Any) -> None:
        http_json(self.url + "/_fake/config", changes)
