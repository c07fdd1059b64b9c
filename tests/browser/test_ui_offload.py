"""The batch page shows where a batch's lines ran when some went to a hosted Batch API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.batch_api import BatchApiConfig, BatchApiProcess
from lowtide.testing.harness import Upstream
from tests.support.batches import ALICE, chat_line, jsonl
from tests.support.offload import batch_backend
from tests.support.served import client

from .conftest import TIMEOUT_MS, Ui


def value_of(facts: Any, term: str) -> Any:
    """The value beside ``term`` in a list of facts (``dl``)."""
    return facts.locator("div").filter(has=facts.page.get_by_text(term, exact=True)).locator("dd")


@pytest.fixture
def batch_api(tmp_path: Path) -> Iterator[BatchApiProcess]:
    api = BatchApiProcess(BatchApiConfig(), log=tmp_path / "batch_api.log")
    yield api
    api.stop()


@pytest.mark.slow
@pytest.mark.measure_children
def test_the_batch_page_shows_the_lines_that_ran_upstream(
    browser: Any, make_server: Any, upstream: Upstream, batch_api: BatchApiProcess
) -> None:
    from playwright.sync_api import expect

    server = make_server(None, extra=batch_backend(batch_api, api_key="EMPTY"))
    c = client(server)
    lines = [chat_line(f"u{i}", f"up {i}") for i in range(20)]
    f = c.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="48h",  # type: ignore[arg-type]
    )
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        ui = Ui(server, upstream, context.new_page())
        ui.sign_in(ALICE)
        ui.goto(f"#/batches/{batch.id}")
        counts = ui.page.locator(".counts")
        # Every line ran upstream once the batch ended: none here.
        expect(value_of(counts, "Ran on hosted")).to_have_text("20")
        expect(value_of(counts, "Ran here")).to_have_text("0")
    finally:
        context.close()
