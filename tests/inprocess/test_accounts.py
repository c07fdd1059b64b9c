"""Accounts: isolation on every route, quotas, rate limits per route class, the admin key."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from tests.support.batches import ALICE, BOB, TEST_URL, ds_lines, jsonl

from .conftest import AppFactory, frozen_at, ids, submit, wait_for

ADMIN = "sk-test-admin-00001"
ADMIN_TOML = f'\n[[api_keys]]\nkey = "{ADMIN}"\naccount = "ops"\nadmin = true\n'
WINDOW = 60  # seconds: rate limits are per minute


async def test_every_route_hides_other_accounts_objects_as_404(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    alice = app.client(ALICE)
    batch = await wait_for(alice, (await submit(alice, ds_lines(1), endpoint=TEST_URL)).id)
    made = {"input": batch.input_file_id, "output": batch.output_file_id, "batch": batch.id}
    bob = {"Authorization": f"Bearer {BOB}"}
    http = app.http
    calls = [
        ("GET", f"/v1/files/{made['input']}"),
        ("GET", f"/v1/files/{made['input']}/content"),
        ("DELETE", f"/v1/files/{made['input']}"),
        ("GET", f"/v1/files/{made['output']}"),
        ("GET", f"/v1/files/{made['output']}/content"),
        ("GET", f"/v1/batches/{made['batch']}"),
        ("POST", f"/v1/batches/{made['batch']}/cancel"),
    ]
    for method, path in calls:
        foreign = await http.request(method, path, headers=bob)
        missing = await http.request(
            method,
            path.replace(made["batch"], "batch_nope")
            .replace(made["input"], "file-batch-nope")
            .replace(made["output"], "file-batch_output-nope"),
            headers=bob,
        )
        assert foreign.status_code == missing.status_code == 404, (method, path)
        assert foreign.json()["error"]["type"] == missing.json()["error"]["type"]
    assert (await http.get("/v1/batches", headers=bob)).json()["data"] == []
    assert (await http.get("/v1/files", headers=bob)).json()["data"] == []
    # Alice's objects are all still there: Bob's DELETE and cancel did nothing.
    assert (await alice.files.retrieve(made["input"])).id == made["input"]
    assert (await alice.batches.retrieve(made["batch"])).status == "completed"
    # Bob's create with Alice's file fails the batch as "not accessible", no leak.
    created = (
        await http.post(
            "/v1/batches",
            headers=bob,
            json={"input_file_id": made["input"], "endpoint": TEST_URL, "completion_window": "24h"},
        )
    ).json()
    assert (await wait_for(app.client(BOB), created["id"])).status == "failed"


async def test_admin_key_reads_every_account_but_writes_as_its_own(
    lowtide_app: AppFactory,
) -> None:
    app = await lowtide_app(extra=ADMIN_TOML)
    alice, admin = app.client(ALICE), app.client(ADMIN)
    batch = await wait_for(alice, (await submit(alice, ds_lines(1), endpoint=TEST_URL)).id)
    assert (await admin.batches.retrieve(batch.id)).id == batch.id
    assert await ids(admin.batches.list()) == [batch.id]
    with pytest.raises(openai.NotFoundError):
        await admin.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        await admin.files.retrieve(batch.input_file_id)
    assert (await app.client(BOB).batches.list()).data == []


async def test_file_count_and_byte_quotas(lowtide_app: AppFactory) -> None:
    app = await lowtide_app(
        extra='[account_defaults]\nmax_files = 2\n[accounts."bob"]\n'
        "max_files = 100\nmax_bytes = 1000\n"
    )
    alice, bob = app.client(ALICE), app.client(BOB)
    first = await alice.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    await alice.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await alice.files.create(file=("c.jsonl", b"{}\n"), purpose="batch")
    assert info.value.code == "quota_exceeded" and "number" in info.value.body["message"]  # type: ignore[index]
    await alice.files.delete(first.id)  # frees the quota
    await alice.files.create(file=("c.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await bob.files.create(file=("big.jsonl", b"x" * 2000), purpose="batch")
    assert "capacity" in info.value.body["message"]  # type: ignore[index]
    assert (await bob.files.list()).data == []  # nothing of it kept
    await bob.files.create(file=("small.jsonl", b"x" * 500), purpose="batch")


Call = Callable[[Any, dict[str, str]], Awaitable[Any]]


async def _list(c: Any, made: dict[str, str]) -> Any:
    return await c.batches.list()


async def _retrieve(c: Any, made: dict[str, str]) -> Any:
    return await c.batches.retrieve(made["batch"])


async def _create(c: Any, made: dict[str, str]) -> Any:
    return await c.batches.create(
        input_file_id=made["file"], endpoint="/v1/chat/completions", completion_window="24h"
    )


async def _cancel(c: Any, made: dict[str, str]) -> Any:
    return await c.batches.cancel(made["batch"])


async def _upload(c: Any, made: dict[str, str]) -> Any:
    return await c.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")


@pytest.mark.parametrize(
    ("route_class", "call"),
    [
        ("list", _list),
        ("retrieve", _retrieve),
        ("create", _create),
        ("cancel", _cancel),
        ("upload", _upload),
    ],
)
async def test_rate_limits_per_route_class_answer_429_and_recover(
    lowtide_app: AppFactory, route_class: str, call: Call
) -> None:
    app = await lowtide_app(
        extra=f"[account_defaults]\n{route_class}_per_minute = 3\n",
        api_only=True,  # batches stay validating: cancellable again and again
    )
    alice, bob = app.client(ALICE), app.client(BOB)
    file = await alice.files.create(file=("a.jsonl", jsonl(ds_lines(1))), purpose="batch")
    batch = await alice.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    made = {"file": file.id, "batch": batch.id}
    # The clock stands at the start of the next window: the three calls land in one window,
    # however long they take.
    next_window = (time.time() // WINDOW + 1) * WINDOW
    with frozen_at(next_window) as clock:
        for _ in range(3):
            response = await call(alice.with_raw_response, made)
            assert response.headers["x-ratelimit-limit-requests"] == "3"
        with pytest.raises(openai.RateLimitError) as info:
            await call(alice, made)
        headers = info.value.response.headers
        retry_after = int(headers["retry-after"])
        assert retry_after == WINDOW  # the whole window is left
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"] == f"{WINDOW}s"
        await bob.batches.list()  # other accounts are not affected
        clock.shift(retry_after - 1)
        with pytest.raises(openai.RateLimitError):  # nothing recovers early
            await call(alice, made)
        clock.shift(1)
        await call(alice, made)  # recovered in the next window
