"""ds_batch_finish_callback: called once the batch is terminal, only on allowed hosts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import chat_line, client, submit, wait_for

TEST_URL = "/v1/chat/ds-test"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: list[tuple[str, dict]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.calls.append((self.path, json.loads(body)))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def lines() -> list[dict]:
    return [chat_line("t1", "x", model="batch-test-model", url=TEST_URL)]


def wait_calls(receiver: Receiver, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.calls) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def test_callback_posts_the_final_batch_to_an_allowed_host(make_server, receiver):
    server = make_server(extra='[callbacks]\nallowed_hosts = ["127.0.0.1"]\n')
    c = client(server)
    hook = receiver.url + "/hook"
    batch = submit(c, lines(), endpoint=TEST_URL, metadata={"ds_batch_finish_callback": hook})
    batch = wait_for(c, batch.id)
    wait_calls(receiver, 1)
    ((path, body),) = receiver.calls
    assert path == "/hook" and body["id"] == batch.id and body["status"] == "completed"
    assert body["output_file_id"] == batch.output_file_id


def test_callback_to_a_host_not_allowed_is_never_sent(make_server, receiver):
    server = make_server()  # no allowed hosts: the default
    c = client(server)
    meta = {"ds_batch_finish_callback": receiver.url + "/hook"}
    wait_for(c, submit(c, lines(), endpoint=TEST_URL, metadata=meta).id)
    time.sleep(1.0)
    assert receiver.calls == []


def test_callback_redirects_are_not_followed(make_server, receiver):
    server = make_server(extra='[callbacks]\nallowed_hosts = ["127.0.0.1"]\n')
    c = client(server)
    meta = {"ds_batch_finish_callback": receiver.url + "/redirect"}
    wait_for(c, submit(c, lines(), endpoint=TEST_URL, metadata=meta).id)
    wait_calls(receiver, 1)
    time.sleep(2.5)  # the second try comes after a 2 s backoff
    assert {path for path, _ in receiver.calls} == {"/redirect"}
    assert len(receiver.calls) >= 2  # a redirect is not a success: it is tried again
