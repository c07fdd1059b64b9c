"""Backend status reports, on both stores: each engine's view replaces its own, stale views are
ignored and swept, and an engine that stops takes its views with it."""

from __future__ import annotations

from lowtide.domain.backends import STALE_AFTER, BackendReport
from lowtide.store import Store

NOW = 1_800_000_000.0


def view(owner: str, up: bool, at: float, error: str | None = None) -> BackendReport:
    return BackendReport("gpu", owner, up, at - 5, error, 16, 2, updated_at=at)


async def test_an_engines_view_replaces_its_own(store: Store) -> None:
    await store.report_backends([view("w1", True, NOW)], NOW)
    await store.report_backends([view("w2", True, NOW)], NOW)
    await store.report_backends([view("w1", False, NOW + 1, "refused")], NOW + 1)
    found = await store.backend_reports(NOW + 1)
    assert [(r.owner, r.up, r.error) for r in found] == [
        ("w1", False, "refused"),
        ("w2", True, None),
    ]
    assert found[0] == view("w1", False, NOW + 1, "refused")


async def test_stale_views_are_ignored_then_swept(store: Store) -> None:
    await store.report_backends([view("dead", True, NOW)], NOW)
    later = NOW + STALE_AFTER + 1
    assert await store.backend_reports(later) == []
    await store.report_backends([view("alive", True, later)], later)  # sweeps the dead one
    assert [r.owner for r in await store.backend_reports(NOW)] == ["alive"]


async def test_a_stopping_engine_forgets_its_views(store: Store) -> None:
    await store.report_backends([view("w1", True, NOW), view("w2", True, NOW)], NOW)
    await store.forget_backends("w1", NOW)
    assert [r.owner for r in await store.backend_reports(NOW)] == ["w2"]
