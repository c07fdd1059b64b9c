"""Malformed requests and a full disk: always a clear 4xx (or 507), never a 500, and nothing
written outside the data directory or half-published. (Malformed HTTP below the ASGI level,
which only a real server's parser sees, is in tests/acceptance/test_bad_http.py.)"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import ALICE, TEST_URL, chat_line, ds_lines, jsonl

from .conftest import AppFactory, submit, wait_for

AUTH = {"Authorization": f"Bearer {ALICE}"}


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def exists(path: Path) -> bool:
    return path.exists()


def envelope_ok(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_malformed_requests_get_clear_4xx(lowtide_app: AppFactory) -> None:
    http = (await lowtide_app()).http
    boundary = "b0undary"
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}", **AUTH}
    truncated = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "\r\n{}\n"
    ).encode()
    bad_id = {"input_file_id": 5, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    cases = [
        await http.post("/v1/files", headers=multipart, content=truncated),
        await http.post("/v1/files", headers={**AUTH, "content-type": "text/plain"}, content=b"x"),
        await http.post(
            "/v1/files", headers={**AUTH, "content-type": "multipart/form-data"}, content=b"x"
        ),
        await http.post("/v1/batches", headers=AUTH, content=b'{"input_file_id": '),
        await http.post("/v1/batches", headers=AUTH, content=b"[1, 2]"),
        await http.post("/v1/batches", headers=AUTH, content=b"\xff\xfe"),
        await http.post("/v1/batches", headers=AUTH, json=bad_id),
        await http.post("/v1/batches", headers=AUTH, content=b"x" * (2 << 20)),
        await http.get("/v1/files/..%2F..%2F..%2Fetc%2Fpasswd", headers=AUTH),
        await http.get("/v1/files/%2e%2e/content", headers=AUTH),
        await http.get("/v1/batches/batch_%00abc", headers=AUTH),
        await http.get("/v1/batches?limit=0", headers=AUTH),
        await http.get("/v1/batches?limit=1000", headers=AUTH),
        await http.get("/v1/batches?create_after=yesterday", headers=AUTH),
        await http.get("/v1/files?order=sideways", headers=AUTH),
        await http.request("GET", "/v1/batches", headers=AUTH, content=b"a body on GET"),
        await http.post("/v1/batches/batch_x/cancel", headers=AUTH),
    ]
    for response in cases:
        envelope_ok(response)


async def test_unicode_and_path_like_filenames_never_touch_the_filesystem(
    lowtide_app: AppFactory,
) -> None:
    app = await lowtide_app()
    c = app.client()
    names = ["../../../../tmp/evil.jsonl", "名前 ✓.jsonl", "a\\b\\..\\c.jsonl", "\x00.jsonl"]
    for name in names:
        f = await c.files.create(file=(name, jsonl([chat_line("a", "x")])), purpose="batch")
        assert "/" not in f.filename and "\\" not in f.filename and "\x00" not in f.filename
    assert not exists(Path("/tmp/evil.jsonl"))
    stored = files_under(app.workdir)
    assert stored and all(app.data in p.parents for p in stored)
    assert all(
        p.name.startswith(("file-batch-", "lowtide.db")) for p in stored if "inputs" in p.parts
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_during_upload_fails_cleanly_and_recovers(
    lowtide_app: AppFactory, small_disk: Path
) -> None:
    app = await lowtide_app(extra=f'[server]\nstorage_url = "file://{small_disk}"\n')
    c = app.client()
    with pytest.raises(openai.APIStatusError) as info:
        await c.files.create(file=("big.jsonl", b"{}\n" * 1_500_000), purpose="batch")  # 4.5 MB
    assert info.value.status_code == 507
    assert (await c.files.list()).data == []
    assert files_under(small_disk) == []  # no half-written file
    f = await c.files.create(file=("ok.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    assert (await c.files.content(f.id)).content == jsonl([chat_line("a", "x")])


async def test_full_disk_during_finalisation_retries_until_space_returns(
    lowtide_app: AppFactory, small_disk: Path
) -> None:
    app = await lowtide_app(extra=f'[server]\nstorage_url = "file://{small_disk}"\n')
    c = app.client()
    lines = ds_lines(100, content="x" * 5000)
    upload = await c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    filler = small_disk / "filler"
    stat = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))  # no room for results
    batch = await c.batches.create(
        input_file_id=upload.id, endpoint=TEST_URL, completion_window="24h"
    )
    batch = await wait_for(c, batch.id, statuses={"finalizing"})
    assert (await app.http.get("/health")).status_code == 200  # still serving
    filler.unlink()
    batch = await wait_for(c, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 100
    assert len((await c.files.content(batch.output_file_id)).text.splitlines()) == 100
    assert not any(p.suffix == ".part" for p in files_under(small_disk))


async def test_batch_runs_when_its_input_file_is_deleted(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    upstream.configure(latency=0.05)
    c = (await lowtide_app(upstream, max_concurrency=2)).client()
    lines = [chat_line(f"d{i}", f"x{i}") for i in range(30)]
    batch = await submit(c, lines)
    await wait_for(c, batch.id, statuses={"in_progress"})
    await c.files.delete(batch.input_file_id)
    batch = await wait_for(c, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 30
