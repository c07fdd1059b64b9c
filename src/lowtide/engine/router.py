"""Which backend gets the next request of a model: least in flight, never over its ceiling,
never while it is paused by a ``Retry-After``, and while it is down only the one probe that
its ``Health`` allows."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from lowtide.backends.base import Backend
from lowtide.engine.health import Health


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
    health: Health = field(init=False)

    def __post_init__(self) -> None:
        self.health = Health(self.backend.name)

    def capacity(self) -> int:
        ceiling = self.backend.max_concurrency
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

    def acquire(self, model: str) -> Slot | None:
        now = time.monotonic()
        candidates = [s for s in self._by_model.get(model, ()) if s.free(now) > 0]
        if not candidates:
            return None
        slot = min(candidates, key=lambda s: s.in_flight)
        slot.in_flight += 1
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
