"""A backend that cannot be reached is visible at once: /ready names it (and stays ready),
/v1/backends says why, and a batch that needs it says it is waiting for it."""

from __future__ import annotations

from typing import Any

from lowtide.testing.harness import free_port
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import ALICE, chat_line

from .conftest import App, AppFactory, eventually, submit, wait_for

AUTH = {"Authorization": f"Bearer {ALICE}"}


class ClosedPort:
    """A backend address where nothing listens."""

    def __init__(self) -> None:
        self.base_url = f"http://127.0.0.1:{free_port()}/v1"


async def ready(app: App) -> Any:
    answer = await app.http.get("/ready")
    assert answer.status_code == 200  # the API works without its backends
    return answer.json()


async def backends(app: App) -> list[dict[str, Any]]:
    answer = await app.http.get("/v1/backends", headers=AUTH)
    assert answer.status_code == 200
    return list(answer.json()["data"])


async def test_an_unreachable_backend_is_reported_everywhere(lowtide_app: AppFactory) -> None:
    app = await lowtide_app(ClosedPort(), engine={"probe_interval_down": 0.2})

    async def down() -> bool:
        return (await ready(app))["backends"] == [{"name": "fake", "state": "down"}]

    await eventually(down, "/ready names the backend as down")
    (listed,) = await backends(app)
    assert listed["state"] == "down" and listed["models"] == ["fake-model", "renamed-model"]
    assert "Cannot connect to host 127.0.0.1" in listed["error"]
    assert listed["since"] is not None and listed["concurrency_limit"] == 16

    c = app.client()
    batch = await wait_for(c, (await submit(c, [chat_line("a", "hi")])).id, {"in_progress"})
    waiting = batch.model_extra["waiting_for"]
    assert waiting["backend"] == "fake" and "Cannot connect" in waiting["error"]
    assert waiting["since"] == listed["since"]


async def test_a_backend_that_comes_up_is_shown_up_and_nothing_waits(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream)

    async def up() -> bool:
        return (await ready(app))["backends"] == [{"name": "fake", "state": "up"}]

    await eventually(up, "/ready names the backend as up")
    c = app.client()
    done = await wait_for(c, (await submit(c, [chat_line("a", "hi")])).id)
    assert done.status == "completed" and done.model_extra["waiting_for"] is None
    assert (await backends(app))[0]["error"] is None


async def test_without_an_engine_the_state_is_unknown(lowtide_app: AppFactory) -> None:
    app = await lowtide_app(ClosedPort(), api_only=True)
    assert (await ready(app))["backends"] == [{"name": "fake", "state": "unknown"}]
    (listed,) = await backends(app)
    assert listed["state"] == "unknown" and listed["since"] is None
