"""Prefix affinity in the router: a prefix group stays on the backend that took its last request
while that backend has a free slot; when it is full the group moves to the least busy one; a
request in no group goes to the least busy backend as before; the router remembers a bounded
number of groups."""

from __future__ import annotations

from lowtide.backends.test_model import TestModelBackend
from lowtide.engine.router import AFFINITY_GROUPS, Router, Slot

G1, G2 = 0x1_0000_1234, 0x3_0000_5678


def router(*ceilings: int) -> Router:
    backends = []
    for i, ceiling in enumerate(ceilings):
        backend = TestModelBackend()
        backend.name, backend.max_concurrency = f"b{i}", ceiling
        backends.append((backend, ["m"]))
    return Router(backends)


def take(r: Router, group: int = 0) -> Slot:
    slot = r.acquire("m", group)
    assert slot is not None
    return slot


def test_a_group_stays_on_its_backend_while_it_has_room() -> None:
    r = router(4, 4)
    first = [take(r, G1).backend.name for _ in range(3)]
    assert first == ["b0"] * 3  # not spread: b1, idle, would be the least busy
    assert take(r, G2).backend.name == "b1"  # a new group: the least busy backend
    assert [take(r, G2).backend.name for _ in range(2)] == ["b1", "b1"]
    assert take(r, G1).backend.name == "b0"  # b0 still has room for its group


def test_a_full_backend_sends_the_group_to_the_least_busy_one_and_the_group_follows() -> None:
    r = router(2, 4)
    held = [take(r, G1), take(r, G1)]
    assert {s.backend.name for s in held} == {"b0"}
    overflow = take(r, G1)
    assert overflow.backend.name == "b1"  # b0 is full
    r.release(held[0])  # b0 has room again, but the group now lives on b1
    assert take(r, G1).backend.name == "b1"


def test_requests_in_no_group_go_to_the_least_busy_backend() -> None:
    r = router(4, 4)
    assert [take(r).backend.name for _ in range(4)] == ["b0", "b1", "b0", "b1"]


def test_a_released_group_keeps_its_backend() -> None:
    r = router(4, 4)
    slot = take(r, G1)
    r.release(slot)
    other = take(r)  # b0 busier than b1 now...
    assert other.backend.name == "b0"
    assert take(r, G1).backend.name == "b0"  # ...and the group still goes to b0


def test_the_router_forgets_the_least_recently_used_group() -> None:
    r = router(AFFINITY_GROUPS + 8, AFFINITY_GROUPS + 8)
    pinned = take(r, G1)  # on b0, held there: b0 is now the busier backend
    assert pinned.backend.name == "b0"
    assert take(r, G1).backend.name == "b0"  # remembered, though b1 is idle
    for group in range(1, AFFINITY_GROUPS + 1):  # as many other groups, each on idle b1
        r.release(take(r, group))
    assert take(r, G1).backend.name == "b1"  # forgotten: the least busy backend


def test_one_backend_needs_no_memory() -> None:
    r = router(4)
    assert {take(r, g).backend.name for g in range(1, 4)} == {"b0"}
    assert not r._affinity
