"""The fake hosted Batch API in a child process that dies with its parent
(``lowtide.testing.children``), for the acceptance tier and the chaos script."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import orjson

from lowtide.testing.batch_api.state import BatchApiConfig
from lowtide.testing.children import end, read_ready_line, spawn
from lowtide.testing.harness import http_json
from lowtide.testing.upstream.process import LISTENING


class BatchApiProcess:
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
        stderr = log.open("ab") if log else subprocess.DEVNULL
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=stderr)
        try:
            self.url = read_ready_line(self.proc, LISTENING, timeout, what="fake Batch API").rstrip(
                "/"
            )
        except BaseException:
            end(self.proc, 5.0)
            raise

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def stats(self, per_key: bool = False) -> dict[str, Any]:
        suffix = "?per_key=1" if per_key else ""
        return cast(dict[str, Any], http_json(self.url + "/_fake/stats" + suffix))

    def batches(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], http_json(self.url + "/_fake/batches")["data"])

    def configure(self, **changes: Any) -> None:
        http_json(self.url + "/_fake/config", changes)

    def stop(self) -> None:
        end(self.proc, 5.0)
