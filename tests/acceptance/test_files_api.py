"""The Files API through the official SDK, and its errors in the OpenAI envelope."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

from .conftest import ALICE, BOB, chat_line, client, jsonl


def test_upload_retrieve_list_content_delete(make_server):
    server = make_server()
    c = client(server)
    body = jsonl([chat_line("a", "héllo")])
    created = c.files.create(file=("mine.jsonl", body), purpose="batch")
    assert created.id.startswith("file-batch-") and len(created.id) == len("file-batch-") + 24
    assert (created.bytes, created.filename, created.purpose) == (len(body), "mine.jsonl", "batch")
    assert c.files.retrieve(created.id).id == created.id
    assert [f.id for f in c.files.list(purpose="batch")] == [created.id]
    assert c.files.content(created.id).content == body
    deleted = c.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(created.id)


def test_list_files_pages_with_after(make_server):
    c = client(make_server())
    ids = [c.files.create(file=(f"{i}.jsonl", b"{}\n"), purpose="batch").id for i in range(5)]
    first = c.files.list(limit=2, order="asc")
    assert [f.id for f in first.data] == ids[:2] and first.has_more
    everything = [f.id for f in c.files.list(limit=2, order="asc")]  # auto-pagination
    assert everything == ids
    assert [f.id for f in c.files.list(order="desc")] == ids[::-1]


def test_expires_after_is_honoured(make_server):
    c = client(make_server())
    f = c.files.create(
        file=("x.jsonl", b"{}\n"),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600


def test_accounts_cannot_see_each_other(make_server):
    server = make_server()
    alice, bob = client(server, ALICE), client(server, BOB)
    f = alice.files.create(file=("a.jsonl", jsonl([chat_line("a", "x")])), purpose="batch")
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(f.id)
    assert bob.files.list().data == []
    assert alice.files.retrieve(f.id).id == f.id


def test_bad_keys_get_401(make_server):
    server = make_server()
    with pytest.raises(openai.AuthenticationError) as info:
        client(server, "sk-wrong-key-123456").files.list()
    assert info.value.body["type"] == "invalid_request_error"
    response = httpx.get(server.base_url + "/files")
    assert response.status_code == 401 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_non_utf8_batch_file_is_refused(make_server):
    c = client(make_server())
    with pytest.raises(openai.BadRequestError) as info:
        c.files.create(file=("bad.jsonl", b'{"a": "\xff\xfe"}\n'), purpose="batch")
    assert "utf-8" in info.value.message


def test_upload_errors_are_clear(make_server):
    server = make_server()
    headers = {"Authorization": f"Bearer {ALICE}"}
    url = server.base_url + "/files"
    cases = [
        (httpx.post(url, headers=headers, json={"purpose": "batch"}), 415),
        (httpx.post(url, headers=headers, files={"file": ("a.jsonl", b"{}")}), 400),
        (httpx.post(url, headers=headers, data={"purpose": "batch"}, files={}), 415),
        (
            httpx.post(
                url,
                headers={**headers, "content-type": "multipart/form-data; boundary=x"},
                content=b'--x\r\nContent-Disposition: form-data; name="file"; filename'
                b'="a"\r\n\r\nabc',
            ),
            400,
        ),
        (
            httpx.post(
                url,
                headers=headers,
                data={"purpose": "nonsense"},
                files={"file": ("a.jsonl", b"{}")},
            ),
            400,
        ),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_framework_errors_use_the_envelope(make_server):
    server = make_server()
    headers = {"Authorization": f"Bearer {ALICE}"}
    cases = [
        httpx.get(server.url + "/v1/nothing-here", headers=headers),
        httpx.put(server.base_url + "/files", headers=headers),
        httpx.post(server.base_url + "/batches", headers=headers, content=b"{not json"),
        httpx.get(server.base_url + "/files/..%2F..%2Fetc%2Fpasswd", headers=headers),
        httpx.get(server.base_url + "/files?limit=abc", headers=headers),
    ]
    assert [r.status_code for r in cases] == [404, 405, 400, 404, 400]
    for response in cases:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_routes_are_served_under_compatible_mode_too(make_server):
    server = make_server()
    c = openai.OpenAI(base_url=server.url + "/compatible-mode/v1", api_key=ALICE, max_retries=0)
    f = c.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert c.files.retrieve(f.id).id == f.id
    assert server.url  # openapi is served as well
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "lowtide"


def test_upload_over_the_limit_is_413_without_reading_it_all(make_server):
    server = make_server(extra="[limits]\nmax_file_bytes = 1000\n")
    c = client(server)
    with pytest.raises(openai.APIStatusError) as info:
        c.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
    assert info.value.status_code == 413
    assert c.files.list().data == []
