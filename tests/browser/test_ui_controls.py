"""The batch controls on the batch page: pause and resume buttons, the results so far, the
retry of failed lines, and what the controls say of a batch (docs/extensions.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.batches import chat_line
from tests.support.served import client, submit, wait_for

from .conftest import Ui


def value_of(facts: Any, term: str) -> Any:
    """The value beside ``term`` in a list of facts (``dl``)."""
    return facts.locator("div").filter(has=facts.page.get_by_text(term, exact=True)).locator("dd")


@pytest.mark.slow
def test_pause_resume_and_results_so_far(ui: Ui) -> None:
    from playwright.sync_api import expect

    # Enough lines that the batch outlives every step below on a slow machine (16 at a time,
    # 0.5 s each: two minutes), until the test lets the rest run at full speed.
    ui.upstream.configure(latency=0.5)
    c = client(ui.server)
    lines = [chat_line(f"p{i}", f"pause {i}") for i in range(4000)]
    batch = submit(c, lines, extra_body={"priority": 3, "max_cost": 1.5})
    ui.sign_in()
    ui.goto(f"#/batches/{batch.id}")
    page = ui.page
    details = page.locator("section[aria-labelledby=details-h] dl")
    expect(value_of(details, "Priority")).to_have_text("3")
    expect(value_of(details, "Cost cap")).to_contain_text("1.50")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()
    expect(page.locator(".speed")).to_contain_text("paused since")
    expect(value_of(details, "Paused since")).to_be_visible()
    assert c.batches.retrieve(batch.id).model_extra["paused_at"] is not None  # type: ignore[index]
    # The lines so far, whatever the batch's state: a download of the results route.
    with page.expect_download() as info:
        page.get_by_role("button", name="Results so far").click()
    download = info.value
    assert download.suggested_filename == f"{batch.id}_results_so_far.jsonl"
    so_far = [json.loads(x) for x in Path(download.path()).read_text().splitlines()]
    assert all(line["custom_id"].startswith("p") for line in so_far)
    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    assert c.batches.retrieve(batch.id).model_extra["paused_at"] is None  # type: ignore[index]
    ui.upstream.configure(latency=0.0)
    expect(page.locator(".status-completed").first).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_be_hidden()


def test_retry_the_failed_lines_of_a_batch(ui: Ui) -> None:
    from playwright.sync_api import expect

    c = client(ui.server)
    lines = [chat_line(f"r{i}", f"{'FAIL400 ' if i < 2 else ''}retry {i}") for i in range(5)]
    source = wait_for(c, submit(c, lines).id)
    ui.upstream.configure(fail_contains="NEVER")
    ui.sign_in()
    ui.goto(f"#/batches/{source.id}")
    page = ui.page
    page.get_by_role("button", name="Retry failed lines").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("2 line(s)")
    dialog.get_by_role("button", name="Retry failed lines").click()
    # The page moves to the new batch, which says what it retries.
    expect(page).not_to_have_url(f"{ui.server.url}/ui/#/batches/{source.id}")
    details = page.locator("section[aria-labelledby=details-h] dl")
    expect(value_of(details, "Retry of")).to_have_text(source.id)
    new_id = page.url.rsplit("/", 1)[1]
    retried = wait_for(c, new_id)
    assert retried.request_counts.completed == 2 and retried.metadata["retry_of"] == source.id
    expect(page.get_by_role("button", name="Retry failed lines")).to_be_hidden()
