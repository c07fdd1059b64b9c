"""The Files API through the official SDK, and its errors in the OpenAI envelope."""

from __future__ import annotations

import openai
import pytest

from tests.support.batches import ALICE, BOB, chat_line, jsonl

from .conftest import AppFactory, ids

ENVELOPE = {"message", "type", "param", "code"}
AUTH = {"Authorization": f"Bearer {ALICE}"}


async def test_upload_retrieve_list_content_delete(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    body = jsonl([chat_line("a", "héllo")])
    created = await c.files.create(file=("mine.jsonl", body), purpose="batch")
    assert created.id.startswith("file-batch-") and len(created.id) == len("file-batch-") + 24
    assert (created.bytes, created.filename, created.purpose) == (len(body), "mine.jsonl", "batch")
    assert (await c.files.retrieve(created.id)).id == created.id
    assert await ids(c.files.list(purpose="batch")) == [created.id]
    assert (await c.files.content(created.id)).content == body
    deleted = await c.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        await c.files.retrieve(created.id)


async def test_list_files_pages_with_after(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    made = [
        (await c.files.create(file=(f"{i}.jsonl", b"{}\n"), purpose="batch")).id for i in range(5)
    ]
    first = await c.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == made[:2] and first.has_more
    assert await ids(c.files.list(limit=2, order="asc")) == made  # auto-pagination
    assert await ids(c.files.list(order="desc")) == made[::-1]


async def test_expires_after_is_honoured(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    f = await c.files.create(
        file=("x.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600


async def test_accounts_cannot_see_each_other(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    alice, bob = app.client(ALICE), app.client(BOB)
    f = await alice.files.create(file=("a.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            await call(f.id)
    assert (await bob.files.list()).data == []
    assert (await alice.files.retrieve(f.id)).id == f.id


async def test_bad_keys_get_401(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    with pytest.raises(openai.AuthenticationError) as info:
        await app.client("sk-wrong-key-123456").files.list()
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    response = await app.http.get("/v1/files")
    assert response.status_code == 401 and set(response.json()["error"]) == ENVELOPE


async def test_non_utf8_batch_file_is_refused(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    with pytest.raises(openai.BadRequestError) as info:
        await c.files.create(file=("bad.jsonl", b'{"a": "\xff\xfe"}\n'), purpose="batch")
    assert "utf-8" in info.value.message
    assert (await c.files.list()).data == []


async def test_upload_errors_are_clear(lowtide_app: AppFactory) -> None:
    http = (await lowtide_app()).http
    url = "/v1/files"
    truncated = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
    cases = [
        (await http.post(url, headers=AUTH, json={"purpose": "batch"}), 415),
        (await http.post(url, headers=AUTH, files={"file": ("a.jsonl", b"{}")}), 400),
        (await http.post(url, headers=AUTH, data={"purpose": "batch"}, files={}), 415),
        (
            await http.post(
                url,
                headers={**AUTH, "content-type": "multipart/form-data; boundary=x"},
                content=truncated,
            ),
            400,
        ),
        (
            await http.post(
                url,
                headers=AUTH,
                data={"purpose": "nonsense"},
                files={"file": ("a.jsonl", b"{}")},
            ),
            400,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == ENVELOPE


async def test_framework_errors_use_the_envelope(lowtide_app: AppFactory) -> None:
    http = (await lowtide_app()).http
    cases = [
        await http.get("/v1/nothing-here", headers=AUTH),
        await http.put("/v1/files", headers=AUTH),
        await http.post("/v1/batches", headers=AUTH, content=b"{not json"),
        await http.get("/v1/files/..%2F..%2Fetc%2Fpasswd", headers=AUTH),
        await http.get("/v1/files?limit=abc", headers=AUTH),
    ]
    assert [r.status_code for r in cases] == [404, 405, 400, 404, 400]
    for response in cases:
        assert set(response.json()["error"]) == ENVELOPE


async def test_routes_are_served_under_compatible_mode_too(lowtide_app: AppFactory) -> None:
    app = await lowtide_app()
    c = app.client(ALICE, prefix="/compatible-mode/v1")
    f = await c.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert (await c.files.retrieve(f.id)).id == f.id
    assert (await app.client(ALICE).files.retrieve(f.id)).id == f.id  # the same store
    assert (await app.http.get("/openapi.json")).json()["info"]["title"] == "lowtide"


async def test_upload_over_the_limit_is_413_without_reading_it_all(
    lowtide_app: AppFactory,
) -> None:
    c = (await lowtide_app(extra="[limits]\nmax_file_bytes = 1000\n")).client()
    with pytest.raises(openai.APIStatusError) as info:
        await c.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert info.value.status_code == 413
    assert (await c.files.list()).data == []
