"""Browser fixtures: Debian's headless Chromium driven by Playwright, against the real
``lowtide serve`` process and the fake upstream (the acceptance fixtures, re-exported here).

Chromium is never downloaded by Playwright: ``scripts/ensure-chromium`` (run by
``make install-dev``) installs Debian's package, and it is launched by ``executable_path``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.harness import Lowtide, Upstream
from tests.support.batches import ALICE
from tests.support.served import make_server, upstream

__all__ = ["ALICE", "Ui", "browser", "make_server", "ui", "upstream"]

CHROMIUM = Path(os.environ.get("LOWTIDE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# How long Playwright waits for what a test expects to see: only turns a hang into a failure.
TIMEOUT_MS = 60_000
# HTTP error statuses are logged as console errors by Chromium; the tests provoke some on
# purpose (a wrong key) and check what the page shows instead.
_HTTP_STATUS_LOG = re.compile(r"^Failed to load resource: the server responded with a status of")


def _missing(reason: str) -> None:
    # On CI a missing browser is a broken set-up, not a reason to skip the browser tests.
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# Module scope: the browser (and Playwright's own event loop) is gone before the next
# module's asyncio tests run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: run `make install-dev`")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: run scripts/ensure-chromium")
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)  # its own default is 5 s
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Ui:
    """One browser page on one server, and what the page did on the network and console."""

    server: Lowtide
    upstream: Upstream
    page: Any
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def goto(self, hash_route: str = "") -> None:
        self.page.goto(f"{self.server.url}/ui/{hash_route}")

    def sign_in(self, key: str = ALICE) -> None:
        self.goto()
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("heading", name="Batches", level=1).wait_for()

    def foreign_requests(self) -> list[str]:
        """Requests to anything but the server itself (blob: downloads made from it are its)."""
        origin = self.server.url
        return [
            url
            for url in self.requests
            if not (url.startswith(origin + "/") or url.startswith(f"blob:{origin}/"))
        ]


@pytest.fixture
def ui(browser: Any, make_server: Any, upstream: Upstream) -> Iterator[Ui]:
    # Some latency, so that a batch's progress is visible between two polls.
    upstream.configure(latency=0.05)
    server = make_server(upstream)
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    helper = Ui(server, upstream, page)
    page.on("request", lambda request: helper.requests.append(request.url))
    page.on("pageerror", lambda error: helper.problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            helper.problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" and not _HTTP_STATUS_LOG.match(message.text)
            else None
        ),
    )
    yield helper
    context.close()
    # Checked after every browser test: the page loads nothing from elsewhere, and runs
    # without script errors or Content-Security-Policy violations.
    assert helper.requests, "the page made no request at all"
    assert helper.foreign_requests() == []
    assert [url for url in helper.requests if ALICE in url] == [], "the key went into a URL"
    assert helper.problems == []
