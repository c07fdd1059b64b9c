"""Malformed HTTP and a full disk: always a clear 4xx (or 507), never a 500, and nothing
written outside the data directory or half-published."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from .conftest import ALICE, chat_line, client, jsonl, submit, wait_for

AUTH = {"Authorization": f"Bearer {ALICE}"}


def envelope_ok(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_malformed_requests_get_clear_4xx(make_server):
    server = make_server()
    base = server.base_url
    boundary = "b0undary"
    multipart = {"content-type": f"multipart/form-data; boundary={boundary}", **AUTH}
    truncated = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
        "\r\n{}\n"
    ).encode()
    cases = [
        httpx.post(base + "/files", headers=multipart, content=truncated),
        httpx.post(base + "/files", headers={**AUTH, "content-type": "text/plain"}, content=b"x"),
        httpx.post(
            base + "/files", headers={**AUTH, "content-type": "multipart/form-data"}, content=b"x"
        ),
        httpx.post(base + "/batches", headers=AUTH, content=b'{"input_file_id": '),
        httpx.post(base + "/batches", headers=AUTH, content=b"[1, 2]"),
        httpx.post(base + "/batches", headers=AUTH, content=b"\xff\xfe"),
        httpx.post(
            base + "/batches",
            headers=AUTH,
            json={
                "input_file_id": 5,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ),
        httpx.post(base + "/batches", headers=AUTH, content=b"x" * (2 << 20)),
        httpx.get(base + "/files/..%2F..%2F..%2Fetc%2Fpasswd", headers=AUTH),
        httpx.get(base + "/files/%2e%2e/content", headers=AUTH),
        httpx.get(base + "/batches/batch_%00abc", headers=AUTH),
        httpx.get(base + "/batches?limit=0", headers=AUTH),
        httpx.get(base + "/batches?limit=1000", headers=AUTH),
        httpx.get(base + "/batches?create_after=yesterday", headers=AUTH),
        httpx.get(base + "/files?order=sideways", headers=AUTH),
        httpx.request("GET", base + "/batches", headers=AUTH, content=b"a body on GET"),
        httpx.post(base + "/batches/batch_x/cancel", headers=AUTH),
    ]
    for response in cases:
        envelope_ok(response)


def test_enormous_headers_are_refused_not_crashing(make_server):
    server = make_server()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    assert httpx.get(server.url + "/health").status_code == 200


def test_unicode_and_path_like_filenames_never_touch_the_filesystem(make_server):
    server = make_server()
    c = client(server)
    names = ["../../../../tmp/evil.jsonl", "名前 ✓.jsonl", "a\\b\\..\\c.jsonl", "\x00.jsonl"]
    for name in names:
        f = c.files.create(file=(name, jsonl([chat_line("a", "x")])), purpose="batch")
        assert "/" not in f.filename and "\\" not in f.filename and "\x00" not in f.filename
    data = server.workdir / "data"
    assert not Path("/tmp/evil.jsonl").exists()
    stored = [p for p in data.rglob("*") if p.is_file()]
    assert all(data in p.parents for p in stored)
    assert all(
        p.name.startswith(("file-batch-", "lowtide.db")) for p in stored if "inputs" in p.parts
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_upload_fails_cleanly_and_recovers(make_server, small_disk):
    server = make_server(extra=f'[server]\nstorage_url = "file://{small_disk}"\n')
    c = client(server)
    with pytest.raises(openai.APIStatusError) as info:
        c.files.create(file=("big.jsonl", b"{}\n" * 1_500_000), purpose="batch")  # 4.5 MB
    assert info.value.status_code == 507
    assert c.files.list().data == []
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # no half-written file
    f = c.files.create(file=("ok.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    assert c.files.content(f.id).content == jsonl([chat_line("a", "x")])


def test_full_disk_during_finalisation_retries_until_space_returns(make_server, small_disk):
    server = make_server(extra=f'[server]\nstorage_url = "file://{small_disk}"\n')
    c = client(server)
    lines = [
        chat_line(f"t{i}", "x" * 5000, model="batch-test-model", url="/v1/chat/ds-test")
        for i in range(100)
    ]
    upload = c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    filler = small_disk / "filler"
    stat = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))  # no room for results
    batch = c.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/ds-test", completion_window="24h"
    )
    batch = wait_for(c, batch.id, statuses={"finalizing"}, timeout=30)
    assert httpx.get(server.url + "/health").status_code == 200  # still serving
    filler.unlink()
    batch = wait_for(c, batch.id, timeout=60)
    assert batch.status == "completed" and batch.request_counts.completed == 100
    assert len(c.files.content(batch.output_file_id).text.splitlines()) == 100
    assert not any(p.suffix == ".part" for p in small_disk.rglob("*"))


def test_batch_runs_when_its_input_file_is_deleted(make_server, upstream):
    upstream.configure(latency=0.05)
    server = make_server(upstream, max_concurrency=2)
    c = client(server)
    lines = [chat_line(f"d{i}", f"x{i}") for i in range(30)]
    batch = submit(c, lines)
    wait_for(c, batch.id, statuses={"in_progress"})
    c.files.delete(batch.input_file_id)
    batch = wait_for(c, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 30
