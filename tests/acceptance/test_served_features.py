"""``lowtide serve`` as a process, the README's way: accounts and keys made by ``lowtide keys``,
and a batch's finish callback, end to end. (Each feature's rules are tested in
tests/inprocess.)"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.support import commands

from .conftest import ALICE, BOB, ServerFactory, chat_line, client, submit, wait_for

TEST_URL = "/v1/chat/ds-test"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.calls.append((self.path, json.loads(body)))
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
    thread.join()
    server.server_close()


def keys(*args: str, database_url: str) -> Any:
    """``lowtide keys ...`` as an operator runs it, beside the running server."""
    cmd = [sys.executable, "-m", "lowtide", "keys", *args, "--database-url", database_url]
    return commands.run(cmd, timeout=60)


def test_accounts_keys_and_the_finish_callback(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    server = make_server(extra='[callbacks]\nallowed_hosts = ["127.0.0.1"]\n')
    url = f"sqlite:///{server.workdir / 'data' / 'lowtide.db'}"
    made = keys("create", "--account", "carol", database_url=url)
    assert made.returncode == 0, made.stderr
    secret, key_id = made.stdout.strip(), made.stderr.split()[0]
    carol, alice = client(server, secret), client(server, ALICE)

    hook = {"ds_batch_finish_callback": receiver.url + "/hook"}
    lines = [chat_line("t0", "x", model="batch-test-model", url=TEST_URL)]
    batch = wait_for(carol, submit(carol, lines, endpoint=TEST_URL, metadata=hook).id)
    assert batch.status == "completed"
    # Accounts see only their own batches; another account's id answers 404.
    assert [b.id for b in carol.batches.list()] == [batch.id]
    assert alice.batches.list().data == [] and client(server, BOB).batches.list().data == []
    with pytest.raises(openai.NotFoundError):
        alice.batches.retrieve(batch.id)
    # The callback: the final batch, POSTed once to the allowed host.
    deadline = time.monotonic() + 30  # only turns a lost callback into a failure
    while not receiver.calls:
        assert time.monotonic() < deadline, "the callback never came"
        time.sleep(0.05)
    ((path, body),) = receiver.calls
    assert path == "/hook" and body["id"] == batch.id and body["status"] == "completed"
    # A revoked key is refused at the next request.
    assert keys("revoke", key_id, database_url=url).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        carol.batches.list()
    assert secret not in server.log()
