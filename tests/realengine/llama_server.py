"""llama.cpp's OpenAI-compatible server (llama-cpp-python) as a process on loopback.

It runs from the venv that ``scripts/ensure-llama-server`` makes (``.venv-llama``), apart
from lowtide's own, and serves the tiny random model of ``tiny_model``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

from lowtide.testing.harness import HOST, free_port, spawn
from tests.realengine.tiny_model import TinyModel

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("LOWTIDE_LLAMA_VENV", REPO / ".venv-llama"))
MARKER = ".installed-llama-cpp-python-*"  # left by scripts/ensure-llama-server on success
START_TIMEOUT = 60.0


def installed_python() -> Path | None:
    """The Python of the llama.cpp venv, if ``scripts/ensure-llama-server`` completed."""
    python = VENV / "bin" / "python"
    if python.exists() and any(VENV.glob(MARKER)):
        return python
    return None


class LlamaServer:
    """One ``python -m llama_cpp.server`` serving ``model`` under the name ``alias``."""

    def __init__(
        self, python: Path, model: TinyModel, workdir: Path, *, alias: str, api_key: str
    ) -> None:
        self.python, self.model, self.alias, self.api_key = python, model, alias, api_key
        self.port = free_port()
        self.log_path = workdir / "llama-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(
            base_url=self.base_url, headers={"authorization": f"Bearer {api_key}"}, timeout=60
        )

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> None:
        cmd = [
            str(self.python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model.path),
            "--model_alias",
            self.alias,
            "--n_ctx",
            str(self.model.context_length),
            "--api_key",
            self.api_key,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--verbose",
            "False",
        ]
        # Unbuffered, so that the log holds everything up to a crash.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.proc = spawn(cmd, stdout=log, stderr=log, env=env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama server exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                if self.http.get("/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"llama server did not answer within {START_TIMEOUT}s:\n{self.log()}")

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        """A direct call, bypassing lowtide: the status and the parsed JSON answer."""
        response = self.http.post("/chat/completions", json=body)
        return response.status_code, response.json()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
