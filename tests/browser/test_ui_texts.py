"""The web page's texts fit the server and the batch: a server without keys needs no sign-in,
the endpoint comes from the file, and a failed batch says why it has no result files."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.harness import Lowtide
from tests.browser.conftest import Ui
from tests.support.batches import ALICE, chat_line, config_toml, jsonl
from tests.support.served import client, submit, wait_for


def expect() -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[Lowtide]:
    """A server with no API keys at all: every caller is the account 'default'."""
    server = Lowtide(tmp_path, "")
    server.start()
    yield server
    server.stop()


def test_a_server_without_keys_needs_no_sign_in(browser: Any, keyless: Lowtide) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{keyless.url}/ui/")
        expect()(page.get_by_role("heading", name="Batches", level=1)).to_be_visible()
        assert page.get_by_label("API key").count() == 0
        expect()(page.get_by_role("button", name="Sign out")).to_be_hidden()
    finally:
        context.close()


def test_the_endpoint_is_read_from_the_files_first_line(ui: Ui) -> None:
    ui.sign_in()
    ui.goto("#/new")
    lines = [chat_line("t1", "hi", model="batch-test-model", url="/v1/chat/ds-test")]
    ui.page.get_by_label("JSONL file").set_input_files(
        files=[{"name": "test.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(lines)}]
    )
    expect()(ui.page.get_by_label("Endpoint")).to_have_value("/v1/chat/ds-test")


def test_a_failed_batch_says_why_it_has_no_result_files(ui: Ui) -> None:
    c = client(ui.server, ALICE)
    batch = wait_for(c, submit(c, [chat_line("x", "hi", model="no-such-model")]).id)
    assert batch.status == "failed"
    ui.sign_in()
    ui.goto(f"#/batches/{batch.id}")
    why = ui.page.get_by_text("the input file failed validation, so no line ran")
    expect()(why).to_be_visible()
    assert ui.page.get_by_text("Result files appear here when the batch ends.").count() == 0


def test_a_batch_waiting_for_a_backend_says_for_which_and_why(browser: Any, tmp_path: Path) -> None:
    """The batch page says which backend it waits for and why; the batches page lists the
    backends with their state, last error and limit."""
    with socket.socket() as sock:  # a backend address where nothing listens
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    server = Lowtide(tmp_path, config_toml(_At(closed)))
    server.start()
    context = browser.new_context()
    try:
        c = client(server, ALICE)
        batch = wait_for(c, submit(c, [chat_line("w", "hi")]).id, {"in_progress"})
        page = context.new_page()
        page.goto(f"{server.url}/ui/")
        page.get_by_label("API key").fill(ALICE)
        page.get_by_role("button", name="Sign in").click()
        # The batches page lists the backends: this one down, why, and its limit.
        backends = page.get_by_role("region", name="Backends")
        fake = backends.locator("tr[data-backend=fake]")
        expect()(fake.locator("td[data-label=State]")).to_contain_text("Down")
        expect()(fake.locator("td[data-label='Last error']")).to_contain_text(
            "Cannot connect to host"
        )
        expect()(fake.locator("td[data-label=Limit]")).to_have_text("16")
        page.goto(f"{server.url}/ui/#/batches/{batch.id}")
        expect()(page.get_by_text("waiting for backend fake: ").first).to_be_visible()
        expect()(page.get_by_text("Cannot connect to host").first).to_be_visible()
    finally:
        context.close()
        server.stop()


class _At:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
