"""moto's S3 server, a real S3-compatible HTTP endpoint on loopback, in a process of its own
(so that its memory does not count in the tests' tracemalloc figures). Started through
``lowtide.testing.harness.spawn``: it dies with the test run even when that is killed."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from lowtide.settings import S3Settings
from lowtide.testing.children import unmeasured_env
from lowtide.testing.harness import HOST, free_port, spawn

S3_REGION = "us-east-1"
S3_KEY = "testing"  # moto accepts any credentials


class MotoServer:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        with log.open("ab") as out:
            self.proc = spawn(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdout=out,
                stderr=out,
                env=unmeasured_env(),
            )
        self._wait_ready(log)

    def _wait_ready(self, log: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{log.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)  # polling for readiness, under the deadline above
        self.stop()
        raise RuntimeError("moto server did not start")

    def settings(self, **changes: Any) -> S3Settings:
        return self.settings_for(self.endpoint, **changes)

    @staticmethod
    def settings_for(endpoint: str, **changes: Any) -> S3Settings:
        return S3Settings(
            endpoint_url=endpoint,
            region=S3_REGION,
            access_key_id=S3_KEY,
            secret_access_key=S3_KEY,
            **changes,
        )

    def toml(self, bucket: str, prefix: str) -> str:
        """The config tables that put lowtide's files in ``s3://bucket/prefix`` on this server."""
        return f"""
[server]
storage_url = "s3://{bucket}/{prefix}"

[s3]
endpoint_url = "{self.endpoint}"
region = "{S3_REGION}"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_KEY}"
"""

    @functools.cache  # noqa: B019 - one client per server, which lives for the session
    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
        )

    def new_bucket(self) -> str:
        """A fresh bucket, so that tests sharing the server do not see each other's objects."""
        name = f"lowtide-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
