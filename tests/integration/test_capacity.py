"""Fleet-wide ``max_concurrency`` (``CapacityKeeper``): two keepers on one PostgreSQL database,
each with the router of its own worker, never let the workers run more than the ceiling."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from lowtide.backends.base import Reply
from lowtide.engine.capacity import CapacityKeeper
from lowtide.engine.router import Router
from lowtide.store import Store, open_store

pytestmark = pytest.mark.postgres

CEILING = 6


class Gpu:
    """A backend that is never called: only its name and ceiling matter here."""

    name = "gpu"
    max_concurrency = CEILING

    def model_name(self, model: str) -> str:
        return model

    async def send(self, path: str, body: bytes) -> Reply:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class During:
    """The real store; runs a callback once while the next ``acquire_slots`` call is under
    way, as the dispatcher may while the keeper awaits the database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hook: Callable[[], None] | None = None

    async def acquire_slots(self, *args: Any) -> int:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return await self.store.acquire_slots(*args)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    opened = open_store(pg_url)
    await opened.open()
    yield opened
    await opened.close()


def keeper(store: Any, owner: str) -> tuple[CapacityKeeper, Router]:
    router = Router([(Gpu(), ["m"])])
    capacity = CapacityKeeper(store, router, ["gpu"], owner=owner, lease=30)
    capacity.start_empty()
    return capacity, router


def start_all(router: Router) -> None:
    while router.acquire("m") is not None:
        pass


async def test_requests_started_while_slots_are_given_back_stay_within_the_ceiling(
    store: Store,
) -> None:
    during = During(store)
    a, router_a = keeper(during, "A")
    b, router_b = keeper(store, "B")
    router_a.slot("gpu").starved = True
    await a.tick()  # A takes the whole ceiling...
    router_a.acquire("m")
    router_a.acquire("m")  # ...and runs two requests, so its next tick gives slots back
    during.hook = lambda: start_all(router_a)  # a new batch arrives during that tick
    await a.tick()
    router_b.slot("gpu").starved = True
    await b.tick()  # B takes what A gave back
    start_all(router_b)

    in_flight = router_a.slot("gpu").in_flight + router_b.slot("gpu").in_flight
    assert in_flight <= CEILING
    assert router_a.slot("gpu").in_flight <= (router_a.slot("gpu").granted or 0)


async def test_a_grant_not_renewed_in_time_starts_nothing(store: Store) -> None:
    a, router = keeper(store, "A")
    router.slot("gpu").starved = True
    await a.tick()
    assert router.slot("gpu").granted == CEILING
    assert router.free("m") == CEILING
    # As if the process had been frozen past its lease: the others may hold the slots now.
    router.slot("gpu").granted_until = time.time() - 0.001
    assert router.free("m") == 0 and router.acquire("m") is None
    await a.tick()  # renewed (nobody took them meanwhile): usable again
    assert router.acquire("m") is not None
