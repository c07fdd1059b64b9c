"""The web page at /ui, in headless Chromium, against the real server and the fake upstream.

Each browser test also checks (in the ``ui`` fixture) that the page requested nothing from
any other host and logged no script error or Content-Security-Policy violation.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Ui
from tests.support.batches import ALICE, chat_line, jsonl
from tests.support.served import client, submit, wait_for

ROOT = Path(__file__).resolve().parents[2]
BATCH_URL = re.compile(r".*#/batches/batch_[0-9a-f]+$")


def progress_of(ui: Ui, name: str) -> Any:
    return ui.page.get_by_role("progressbar", name=f"Progress of {name}")


def step_time(ui: Ui, step: str) -> Any:
    """The time shown by a step of the batch page's status timeline."""
    timeline = ui.page.get_by_role("region", name="Timeline")
    return timeline.get_by_role("listitem").filter(has_text=step).locator("time")


def expect() -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect


def test_sign_in_upload_watch_progress_and_download_output(ui: Ui) -> None:
    page, check = ui.page, expect()
    # One slow line holds the batch below 100% for a while, so progress shows mid-run.
    ui.upstream.configure(slow_seconds=3.0)
    lines = [chat_line("q0", "SLOW please")] + [chat_line(f"q{i}", f"hi {i}") for i in range(1, 30)]

    ui.goto()
    page.get_by_label("API key").fill("sk-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    check(page.get_by_role("alert")).to_contain_text("Incorrect API key")
    page.get_by_label("API key").fill(ALICE)
    page.get_by_role("button", name="Sign in").click()
    check(page.get_by_role("heading", name="Batches", level=1)).to_be_visible()
    stored = page.evaluate("[sessionStorage.getItem('lowtide.apiKey'), localStorage.length]")
    assert stored == [ALICE, 0]  # this tab's session storage only

    page.get_by_role("navigation", name="Main").get_by_role("link", name="New batch").click()
    page.get_by_label("JSONL file").set_input_files(
        files=[{"name": "evals.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(lines)}]
    )
    page.get_by_label("Endpoint").select_option("/v1/chat/completions")
    page.get_by_label("Completion window").fill("48h")
    page.get_by_label("Name (optional)").fill("nightly-eval")
    page.get_by_label("Description (optional)").fill("thirty greetings")
    page.get_by_role("button", name="Upload and create batch").click()
    page.wait_for_url(BATCH_URL)
    check(page.get_by_role("heading", name="nightly-eval", level=1)).to_be_visible()
    check(page.get_by_text("thirty greetings")).to_be_visible()

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Batches").click()
    bar = progress_of(ui, "nightly-eval")
    page.wait_for_function(
        "bar => { const v = Number(bar.getAttribute('aria-valuenow')); return v > 0 && v < 100; }",
        arg=bar.element_handle(),
    )
    check(bar).to_have_attribute("aria-valuenow", "100")
    row = page.get_by_role("row").filter(has_text="nightly-eval")
    check(row).to_contain_text("Completed")
    check(row).to_contain_text("30 of 30 done")

    row.get_by_role("link", name="nightly-eval").click()
    page.wait_for_url(BATCH_URL)
    for step in ("Created", "In progress", "Finalizing", "Completed"):
        check(step_time(ui, step)).to_be_visible()
    usage = page.get_by_role("region", name="Usage and cost")
    check(usage).to_contain_text("Output tokens")
    check(usage).to_contain_text("$0.0")
    check(page.get_by_role("region", name="Progress")).to_contain_text("30 of 30 done")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download output").click()
    download = info.value
    assert re.fullmatch(r"batch_[0-9a-f]+_output\.jsonl", download.suggested_filename)
    results = [json.loads(x) for x in Path(download.path()).read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in lines]
    assert all(r["response"]["status_code"] == 200 for r in results)


def test_cancel_a_running_batch_after_confirming(ui: Ui) -> None:
    page, check = ui.page, expect()
    ui.upstream.configure(latency=0.3)
    c = client(ui.server)
    batch = submit(
        c, [chat_line(f"c{i}", f"long {i}") for i in range(1000)], metadata={"ds_name": "backfill"}
    )
    ui.sign_in()
    page.get_by_role("link", name="backfill").click()
    check(page.get_by_text("In progress", exact=True).first).to_be_visible()
    # Rate and ETA come from successive polls of the running batch.
    check(page.get_by_role("region", name="Progress")).to_contain_text(
        re.compile(r"req/(s|min) · .* left")
    )

    cancel = page.get_by_role("button", name="Cancel batch")
    cancel.focus()
    page.keyboard.press("Enter")  # the keyboard alone is enough
    dialog = page.get_by_role("dialog", name="Cancel backfill?")
    check(dialog).to_be_visible()
    check(dialog.get_by_role("button", name="Keep running")).to_be_focused()
    page.keyboard.press("Escape")
    check(dialog).to_be_hidden()
    assert c.batches.retrieve(batch.id).status == "in_progress"

    cancel.click()
    dialog.get_by_role("button", name="Cancel batch").click()
    check(page.locator(".heading .badge")).to_have_text("Cancelled")
    check(cancel).to_be_hidden()
    for step in ("Cancelling", "Cancelled"):
        check(step_time(ui, step)).to_be_visible()
    check(page.get_by_role("button", name="Download errors")).to_be_visible()
    assert wait_for(c, batch.id).status == "cancelled"


def test_failed_batch_shows_its_validation_errors(ui: Ui) -> None:
    page, check = ui.page, expect()
    c = client(ui.server)
    good = submit(c, [chat_line("g1", "fine")], metadata={"ds_name": "good-run"})
    bad_file = c.files.create(
        file=(
            "typos.jsonl",
            jsonl([chat_line("a", "x")])
            + b"{not json\n"
            + jsonl([chat_line("b", "y", model="no-such-model")]),
        ),
        purpose="batch",
    )
    bad = c.batches.create(
        input_file_id=bad_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"ds_name": "typo-run"},
    )
    assert wait_for(c, bad.id).status == "failed"
    assert wait_for(c, good.id).status == "completed"

    # A phone's width: the list turns into cards, with nothing to scroll sideways.
    page.set_viewport_size({"width": 375, "height": 800})
    ui.sign_in()
    rows = page.get_by_role("row").filter(has=page.get_by_role("link"))
    # The names listed, exactly: the rows of the previous filter stay until the new answer
    # comes (and the name filter waits for typing to pause), so a count alone could match
    # the old rows.
    names = rows.get_by_role("link")
    check(rows).to_have_count(2)
    page.get_by_label("Status").select_option("failed")
    check(names).to_have_text(["typo-run"])
    page.get_by_label("Status").select_option("")
    page.get_by_label("Name contains").fill("good")
    check(names).to_have_text(["good-run"])
    page.get_by_label("Name contains").fill("typo")
    check(names).to_have_text(["typo-run"])
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    page.get_by_role("link", name="typo-run").click()
    errors = page.get_by_role("region", name=re.compile(r"Validation errors"))
    check(errors.get_by_role("heading")).to_have_text("Validation errors (2)")
    table_rows = errors.get_by_role("row")
    check(table_rows.nth(1)).to_contain_text("2")
    check(table_rows.nth(1)).to_contain_text("invalid_json_line")
    check(table_rows.nth(2)).to_contain_text("model_not_found")
    check(table_rows.nth(2)).to_contain_text("body.model")
    check(page.get_by_role("region", name="Timeline")).to_contain_text("Failed")
    check(page.get_by_role("button", name="Download output")).to_have_count(0)
    check(page.get_by_role("button", name="Cancel batch")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_files_page_lists_downloads_and_deletes(ui: Ui) -> None:
    page, check = ui.page, expect()
    c = client(ui.server)
    c.files.create(file=("keep.jsonl", jsonl([chat_line("k", "keep")])), purpose="batch")
    c.files.create(file=("drop.jsonl", jsonl([chat_line("d", "drop")])), purpose="batch")
    ui.sign_in()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Files").click()
    check(page.get_by_role("heading", name="Files", level=1)).to_be_visible()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download keep.jsonl").click()
    assert info.value.suggested_filename == "keep.jsonl"
    assert json.loads(Path(info.value.path()).read_text())["custom_id"] == "k"

    page.get_by_role("button", name="Delete drop.jsonl").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete file").click()
    check(page.get_by_role("row").filter(has_text="drop.jsonl")).to_have_count(0)
    check(page.get_by_role("row").filter(has_text="keep.jsonl")).to_have_count(1)
    assert [f.filename for f in c.files.list()] == ["keep.jsonl"]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_ui_routes_serve_package_files_with_security_headers(make_server: Any) -> None:
    server = make_server()
    status, headers, _ = _get(server.url + "/")
    assert (status, headers["location"]) == (307, "/ui/")
    for path, content_type in [
        ("/ui", "text/html; charset=utf-8"),
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/static/app.js", "text/javascript; charset=utf-8"),
        ("/ui/static/style.css", "text/css; charset=utf-8"),
        ("/ui/static/favicon.svg", "image/svg+xml"),
    ]:
        status, headers, body = _get(server.url + path)
        assert (status, headers["content-type"]) == (200, content_type), path
        assert headers["content-security-policy"].startswith("default-src 'self';")
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-cache"
        assert _get(server.url + path, {"If-None-Match": headers["etag"]})[0] == 304
        assert body
    index = _get(server.url + "/ui/")[2].decode()
    assert "<script>" not in index and "style=" not in index and "http" not in index
    for path in [
        "/ui/static/nope.js",
        "/ui/static/..%2f..%2fpyproject.toml",
        "/ui/static/__init__.py",
        "/ui/static/%2e%2e",
    ]:
        status, headers, body = _get(server.url + path)
        assert status == 404, path
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.skipif(
    os.environ.get("LOWTIDE_SCREENSHOTS") != "1",
    reason="writes docs/screenshots; run with LOWTIDE_SCREENSHOTS=1",
)
def test_screenshots_for_the_readme(ui: Ui) -> None:
    page, check = ui.page, expect()
    c = client(ui.server)
    done = submit(
        c,
        [chat_line(f"n{i}", f"question {i}") for i in range(120)],
        metadata={"ds_name": "nightly-eval", "ds_description": "120 prompts of the nightly set"},
    )
    wait_for(c, done.id)
    failed_file = c.files.create(
        file=("typos.jsonl", b"{not json\n" + jsonl([chat_line("b", "y", model="nope")])),
        purpose="batch",
    )
    failed = c.batches.create(
        input_file_id=failed_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"ds_name": "typo-run"},
    )
    wait_for(c, failed.id)
    lines = [chat_line(f"x{i}", "quick" if i < 10 else "SLOW") for i in range(40)]
    cancelled = submit(c, lines, metadata={"ds_name": "abandoned"})
    deadline = time.monotonic() + 60  # only turns a hang into a failure
    while c.batches.retrieve(cancelled.id).request_counts.completed < 10:
        assert time.monotonic() < deadline, "the quick lines did not finish"
        time.sleep(0.05)
    c.batches.cancel(cancelled.id)
    wait_for(c, cancelled.id)
    ui.upstream.configure(latency=0.4)
    running = submit(
        c,
        [chat_line(f"b{i}", f"backfill {i}") for i in range(2000)],
        metadata={"ds_name": "backfill-2024", "ds_description": "re-scoring last year's tickets"},
    )
    ui.sign_in()
    check(progress_of(ui, "backfill-2024")).not_to_have_attribute("aria-valuenow", "0")
    check(page.get_by_role("row").filter(has_text="backfill-2024")).to_contain_text(" left")
    out = ROOT / "docs" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "batches.png"))
    page.get_by_role("link", name="backfill-2024").click()
    check(page.get_by_role("region", name="Progress")).to_contain_text(" left")
    page.screenshot(path=str(out / "batch.png"), full_page=True)
    c.batches.cancel(running.id)
