"""Which backend gets the next request of a model: least in flight, never over its ceiling,
never while it is paused by a ``Retry-After``, and while it is down only the one probe that
its ``Health`` allows.

Prefix affinity: a request of a prefix group (``lowtide.domain.prefix``) goes to the backend
that took the group's last request while that backend has a free slot, so that each engine's
prefix cache serves the groups it has computed instead of every engine computing every group.
When that backend is full, the request goes where it would have gone anyway (least in flight),
and the group follows it there. The router remembers the last ``AFFINITY_GROUPS`` groups."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lowtide.backends.base import Backend
from lowtide.engine.health import Health
from lowtide.engine.limits import FixedLimit, Limiter

if TYPE_CHECKING:
    from lowtide.engine.budgets import Budget

#: Prefix groups whose backend the router remembers (the least recently used is forgotten):
#: far more than a fleet of engines' caches hold at once, and a few hundred KiB at most.
AFFINITY_GROUPS = 4096


@dataclass(slots=True)
class Slot:
    backend: Backend
    in_flight: int = 0
    paused_until: float = 0.0
    #: Slots this process holds of the backend's fleet-wide ceiling; None when it is alone.
    granted: int | None = None
    #: Wall-clock time at which the grant's lease runs out unless renewed (then other workers
    #: may take the slots, so this one must not start anything on them).
    granted_until: float = math.inf
    #: A dispatcher found no free capacity here since the capacity keeper last looked.
    starved: bool = False
    #: Its rpm/tpm budget, if it has one (``lowtide.engine.budgets``).
    budget: Budget | None = None
    health: Health = field(init=False)
    #: How many requests it may have in flight (``lowtide.engine.limits``): always its
    #: ``max_concurrency`` unless ``concurrency = "adaptive"`` puts another limiter here.
    limiter: Limiter = field(init=False)

    def __post_init__(self) -> None:
        self.health = Health(self.backend.name)
        self.limiter = FixedLimit(self.backend.max_concurrency, time.monotonic)

    def limit(self) -> int:
        """Requests this backend may have in flight now, fleet shares aside: its
        ``max_concurrency``, or the adaptive limit under it (what is published as its limit)."""
        return max(1, min(self.backend.max_concurrency, self.limiter.limit()))

    def capacity(self) -> int:
        """``limit()``, and in a fleet no more than this process's share of the ceiling."""
        ceiling = self.limit()
        if self.granted is None:
            return ceiling
        if time.time() >= self.granted_until:
            return 0  # not renewed in time (a stall, a lost database): the slots may be gone
        return min(self.granted, ceiling)

    def held(self) -> bool:
        """A ``Retry-After`` holds it: nothing may be sent to it yet."""
        return time.monotonic() < self.paused_until

    def free(self, now: float) -> int:
        if now < self.paused_until:
            return 0
        return self.health.free(now, self.in_flight, self.capacity())


class Router:
    def __init__(self, backends: list[tuple[Backend, list[str]]]) -> None:
        self._slots: dict[str, Slot] = {}
        self._by_model: dict[str, list[Slot]] = {}
        self._affinity: OrderedDict[tuple[str, int], Slot] = OrderedDict()
        for backend, models in backends:
            slot = self._slots.setdefault(backend.name, Slot(backend))
            for model in models:
                self._by_model.setdefault(model, []).append(slot)

    def serves(self, model: str) -> bool:
        return model in self._by_model

    def free(self, model: str) -> int:
        now = time.monotonic()
        slots = self._by_model.get(model, ())
        total = sum(slot.free(now) for slot in slots)
        if total == 0:
            for slot in slots:
                slot.starved = True
        return total

    def acquire(self, model: str, group: int = 0) -> Slot | None:
        """A slot for a request of ``model`` in prefix group ``group`` (0: none)."""
        now = time.monotonic()
        candidates = [s for s in self._by_model.get(model, ()) if s.free(now) > 0]
        if not candidates:
            return None
        if group and len(self._by_model[model]) > 1:
            slot = self._affine((model, group), candidates)
        else:
            slot = min(candidates, key=lambda s: s.in_flight)
        slot.in_flight += 1
        return slot

    def _affine(self, key: tuple[str, int], candidates: list[Slot]) -> Slot:
        """The backend that took the group's last request if it has room, else the least
        busy; remembered as the group's backend from now on."""
        slot = self._affinity.get(key)
        if slot is None or not any(s is slot for s in candidates):
            slot = min(candidates, key=lambda s: s.in_flight)
        self._affinity[key] = slot
        self._affinity.move_to_end(key)
        if len(self._affinity) > AFFINITY_GROUPS:
            self._affinity.popitem(last=False)
        return slot

    def release(self, slot: Slot) -> None:
        slot.in_flight -= 1

    def pause(self, slot: Slot, seconds: float) -> None:
        """Send nothing more to this backend for ``seconds`` (it answered 429/503 + Retry-After)."""
        slot.paused_until = max(slot.paused_until, time.monotonic() + seconds)

    def next_unpause(self) -> float | None:
        """Seconds until the first paused backend may be used again (a ``Retry-After``, or
        the pause of one that is down)."""
        now = time.monotonic()
        ends = (max(s.paused_until, s.health.resume_at) for s in self._slots.values())
        waits = [end - now for end in ends if end > now]
        return min(waits) if waits else None

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def slot(self, backend_name: str) -> Slot:
        return self._slots[backend_name]

    def backends(self) -> list[Backend]:
        return [slot.backend for slot in self._slots.values()]
