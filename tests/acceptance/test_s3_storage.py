"""``lowtide serve`` with its files on S3 (``storage_url = "s3://bucket/prefix"``): moto's
S3 server on loopback, driven end to end through the ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowtide.testing.harness import Lowtide, http_json

from ..integration.conftest import S3_KEY, S3_REGION, MotoServer
from .conftest import ServerFactory, chat_line, client, jsonl, submit, wait_for

TEST_URL = "/v1/chat/ds-test"
PREFIX = "lowtide/prod"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


def s3_toml(moto: MotoServer, bucket: str) -> str:
    return f"""
[server]
storage_url = "s3://{bucket}/{PREFIX}"

[s3]
endpoint_url = "{moto.endpoint}"
region = "{S3_REGION}"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_KEY}"
"""


def test_a_batch_runs_with_its_files_on_s3(make_server: ServerFactory, moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    server = make_server(extra=s3_toml(moto, bucket))
    assert http_json(server.url + "/ready")["storage"] == "ok"
    c = client(server)
    lines = [
        chat_line(f"t{i}", f"hello {i}", model="batch-test-model", url=TEST_URL) for i in range(5)
    ]

    batch = wait_for(c, submit(c, lines, endpoint=TEST_URL).id)

    assert batch.status == "completed" and batch.request_counts.completed == 5
    assert c.files.content(batch.input_file_id).content == jsonl(lines)
    output = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == [f"t{i}" for i in range(5)]
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert batch.error_file_id is None
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith(PREFIX + "/") for k in keys)
    assert len(keys) == 2  # the input file and the output file; no error file, nothing else


def test_serve_refuses_a_missing_bucket(tmp_path: Path, moto: MotoServer) -> None:
    server = Lowtide(tmp_path, s3_toml(moto, "no-such-bucket"))
    with pytest.raises(RuntimeError, match="does not exist"):
        server.start()
    server.stop()
