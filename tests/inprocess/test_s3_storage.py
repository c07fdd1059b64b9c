"""lowtide with its files on S3 (``storage_url = "s3://bucket/prefix"``): moto's S3 server on
loopback (a process of its own), the API and engine in-process, driven through the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lowtide import errors
from tests.support.batches import TEST_URL, config_toml, ds_lines, jsonl
from tests.support.moto import MotoServer

from .conftest import AppFactory, start_app, submit, wait_for

PREFIX = "lowtide/prod"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


async def test_a_batch_runs_with_its_files_on_s3(lowtide_app: AppFactory, moto: MotoServer) -> None:
    bucket = moto.new_bucket()
    app = await lowtide_app(extra=moto.toml(bucket, PREFIX))
    assert (await app.http.get("/ready")).json()["storage"] == "ok"
    c = app.client()
    lines = ds_lines(5)

    batch = await wait_for(c, (await submit(c, lines, endpoint=TEST_URL)).id)

    assert batch.status == "completed" and batch.request_counts.completed == 5
    assert (await c.files.content(batch.input_file_id)).content == jsonl(lines)
    output = [
        json.loads(x) for x in (await c.files.content(batch.output_file_id)).text.splitlines()
    ]
    assert [o["custom_id"] for o in output] == [f"t{i}" for i in range(5)]
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert batch.error_file_id is None
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith(PREFIX + "/") for k in keys)
    assert len(keys) == 2  # the input file and the output file; no error file, nothing else
    assert not (app.data / "files").exists()  # nothing on the local disk


async def test_start_refuses_a_missing_bucket(tmp_path: Path, moto: MotoServer) -> None:
    toml = config_toml(None, extra=moto.toml("no-such-bucket", PREFIX))
    with pytest.raises(errors.LowtideError, match="does not exist"):
        await start_app(tmp_path / "lowtide", toml)
