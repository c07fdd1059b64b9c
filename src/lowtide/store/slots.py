"""Fair shares of a backend's concurrency slots between the workers that want them.

Each worker holds some of the backend's ``limit`` slot rows (leased, renewed by every call of
``acquire_slots``) and records how many it wants. Left alone, the first worker to ask would
take every free slot and a worker that asked later would wait for them: so while another
worker that wants slots holds fewer than its fair share, a worker is granted at most its own
fair share, and gives back what it holds above that as soon as it does not use it. When nobody
else is waiting, a worker may take every free slot it wants.

Fair is max-min fair: nobody's share is more than it wants, and what one worker does not want
is shared by the others. The split is computed alike by every worker (ties go by owner name),
so the shares add up to the limit exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Demand:
    """A worker that wants slots of a backend: how many, and how many it holds."""

    owner: str
    want: int
    held: int


@dataclass(frozen=True, slots=True)
class Plan:
    """What one ``acquire_slots`` call does: give back ``give_back`` slots, or try to take
    ``take`` more; the worker may then use up to ``allowed`` of those it holds."""

    allowed: int
    give_back: int = 0
    take: int = 0

    def granted(self, held: int) -> int:
        """What the worker may use, holding ``held`` slots after the plan ran."""
        return min(held, self.allowed)


def fair_shares(limit: int, wants: Mapping[str, int]) -> dict[str, int]:
    """Split ``limit`` slots max-min fairly between owners that want ``wants[owner]`` each."""
    shares = dict.fromkeys(wants, 0)
    remaining = limit
    active = sorted(owner for owner, want in wants.items() if want > 0)
    while remaining > 0 and active:
        each, extra = divmod(remaining, len(active))
        if each == 0:  # fewer slots than owners: one each, in name order
            for owner in active[:extra]:
                shares[owner] += 1
            break
        for owner in active:
            give = min(each, wants[owner] - shares[owner])
            shares[owner] += give
            remaining -= give
        active = [owner for owner in active if shares[owner] < wants[owner]]
    return shares


def plan(
    owner: str, want: int, in_use: int, limit: int, held: int, demands: Sequence[Demand]
) -> Plan:
    """What ``owner`` (holding ``held`` slots, ``in_use`` of them running requests) gets when
    it wants ``want`` of ``limit``, given the other workers' ``demands`` (its own is ignored).

    Slots in use are never given back to make room for others: the worker may start nothing
    new on them, and they go back as their requests end (at the next calls).
    """
    others = [d for d in demands if d.owner != owner]
    wants = {d.owner: min(d.want, limit) for d in others}
    wants[owner] = min(max(want, 0), limit)
    shares = fair_shares(limit, wants)
    waiting = any(d.held < shares[d.owner] for d in others)
    allowed = min(wants[owner], shares[owner]) if waiting else wants[owner]
    keep = max(allowed, min(in_use, held))
    if held > keep:
        return Plan(allowed, give_back=held - keep)
    return Plan(allowed, take=max(0, allowed - held))
