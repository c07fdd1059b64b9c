"""Accounts: isolation on every route, quotas, rate limits per route class, the admin key."""

from __future__ import annotations

import time

import httpx2 as httpx
import openai
import pytest

from .conftest import ALICE, BOB, chat_line, client, jsonl, submit, wait_for

TEST_URL = "/v1/chat/ds-test"
ADMIN = "sk-test-admin-00001"
ADMIN_TOML = f'\n[[api_keys]]\nkey = "{ADMIN}"\naccount = "ops"\nadmin = true\n'


def ds_lines(n: int = 1) -> list[dict]:
    return [chat_line(f"t{i}", "x", model="batch-test-model", url=TEST_URL) for i in range(n)]


def test_every_route_hides_other_accounts_objects_as_404(make_server):
    server = make_server()
    alice = client(server, ALICE)
    batch = wait_for(alice, submit(alice, ds_lines(), endpoint=TEST_URL).id)
    ids = {
        "input": batch.input_file_id,
        "output": batch.output_file_id,
        "batch": batch.id,
    }
    bob = {"Authorization": f"Bearer {BOB}"}
    base = server.base_url
    calls = [
        ("GET", f"/files/{ids['input']}"),
        ("GET", f"/files/{ids['input']}/content"),
        ("DELETE", f"/files/{ids['input']}"),
        ("GET", f"/files/{ids['output']}"),
        ("GET", f"/files/{ids['output']}/content"),
        ("GET", f"/batches/{ids['batch']}"),
        ("POST", f"/batches/{ids['batch']}/cancel"),
    ]
    for method, path in calls:
        foreign = httpx.request(method, base + path, headers=bob)
        missing = httpx.request(
            method,
            base
            + path.replace(ids["batch"], "batch_nope")
            .replace(ids["input"], "file-batch-nope")
            .replace(ids["output"], "file-batch_output-nope"),
            headers=bob,
        )
        assert foreign.status_code == missing.status_code == 404, (method, path)
        assert foreign.json()["error"]["type"] == missing.json()["error"]["type"]
    assert httpx.get(base + "/batches", headers=bob).json()["data"] == []
    assert httpx.get(base + "/files", headers=bob).json()["data"] == []
    # Bob's create with Alice's file fails the batch as "not accessible", no leak.
    created = httpx.post(
        base + "/batches",
        headers=bob,
        json={"input_file_id": ids["input"], "endpoint": TEST_URL, "completion_window": "24h"},
    ).json()
    assert wait_for(client(server, BOB), created["id"]).status == "failed"


def test_admin_key_reads_every_account_but_writes_as_its_own(make_server):
    server = make_server(extra=ADMIN_TOML)
    alice, admin = client(server, ALICE), client(server, ADMIN)
    batch = wait_for(alice, submit(alice, ds_lines(), endpoint=TEST_URL).id)
    assert admin.batches.retrieve(batch.id).id == batch.id
    assert [b.id for b in admin.batches.list()] == [batch.id]
    with pytest.raises(openai.NotFoundError):
        admin.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        admin.files.retrieve(batch.input_file_id)
    assert client(server, BOB).batches.list().data == []


def test_file_count_and_byte_quotas(make_server):
    server = make_server(
        extra='[account_defaults]\nmax_files = 2\n[accounts."bob"]\n'
        "max_files = 100\nmax_bytes = 1000\n"
    )
    alice, bob = client(server, ALICE), client(server, BOB)
    first = alice.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    alice.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as info:
        alice.files.create(file=("c.jsonl", b"{}\n"), purpose="batch")
    assert info.value.code == "quota_exceeded" and "number" in info.value.body["message"]
    alice.files.delete(first.id)  # frees the quota
    alice.files.create(file=("c.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as info:
        bob.files.create(file=("big.jsonl", b"x" * 2000), purpose="batch")
    assert "capacity" in info.value.body["message"]
    assert bob.files.list().data == []  # nothing of it kept
    bob.files.create(file=("small.jsonl", b"x" * 500), purpose="batch")


@pytest.mark.parametrize(
    ("route_class", "call"),
    [
        ("list", lambda c, ids: c.batches.list()),
        ("retrieve", lambda c, ids: c.batches.retrieve(ids["batch"])),
        (
            "create",
            lambda c, ids: c.batches.create(
                input_file_id=ids["file"], endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ),
        ("cancel", lambda c, ids: c.batches.cancel(ids["batch"])),
        ("upload", lambda c, ids: c.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")),
    ],
)
def test_rate_limits_per_route_class_answer_429_and_recover(make_server, route_class, call):
    server = make_server(
        extra=f"[account_defaults]\n{route_class}_per_minute = 3\n"
        "[testing]\nrate_limit_window_seconds = 3\n",
        extra_args=("--api-only",),  # batches stay validating: cancellable again and again
    )
    alice, bob = client(server, ALICE), client(server, BOB)
    file = alice.files.create(file=("a.jsonl", jsonl(ds_lines())), purpose="batch")
    batch = alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    ids = {"file": file.id, "batch": batch.id}
    _wait_for_fresh_window(3)
    for _ in range(3):
        response = call(alice.with_raw_response, ids)
        assert response.headers["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(openai.RateLimitError) as info:
        call(alice, ids)
    headers = info.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    bob.batches.list()  # other accounts are not affected
    time.sleep(float(headers["retry-after"]))
    call(alice, ids)  # recovered in the next window


def _wait_for_fresh_window(seconds: float) -> None:
    # Start at the beginning of a window, so the three calls land in the same one.
    time.sleep(seconds - (time.time() % seconds) + 0.05)
