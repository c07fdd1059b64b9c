"""Spill-over: how many of a batch's lines to offload so that it ends before its deadline,
when its model has HTTP backends too and its batch backend says ``spill = true``.

The rule (docs/offload.md, "Spill-over"), with ``D`` the batch's deadline (``expires_at``),
``M`` the backend's ``deadline_margin`` and ``W`` the upstream's window:

- the HTTP backends should be done by ``D - M``; an upstream batch created now ends by
  ``now + W``, which must be no later than ``D - M``: so lines can be offloaded only until
  ``D - M - W``, the *last call*;
- the HTTP backends' recent pace ``p`` (lines of this batch they ended per second, over the
  last ``PACE_WINDOW`` seconds) gives what they will still do: ``p * (D - M - now)``;
- the lines left to the HTTP backends (pending or in flight, not held by upstream batches)
  beyond that are offloaded: only as many as needed, and none while they keep up.

No pace is read from less than ``MIN_SPAN`` seconds of history: the first seconds of a batch
say little. Without a pace nothing is offloaded, unless the last call has come: then every line
left is (the HTTP backends did not end a single line in the time there was to measure them).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

#: Seconds of history the pace is read over.
PACE_WINDOW: Final = 120.0
#: No pace from less history than this.
MIN_SPAN: Final = 10.0


class PaceMeter:
    """Lines ended by the HTTP backends, sampled over time (monotonic seconds)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        self._samples.append((at, done))
        # Keep one sample at or before the window's start, so the pace spans the whole window.
        while len(self._samples) > 2 and self._samples[1][0] <= at - PACE_WINDOW:
            self._samples.popleft()

    def pace(self) -> float | None:
        """Lines per second over the window; None before ``MIN_SPAN`` seconds were seen."""
        if len(self._samples) < 2:
            return None
        (first_at, first_done), (last_at, last_done) = self._samples[0], self._samples[-1]
        span = last_at - first_at
        if span < MIN_SPAN:
            return None
        return max(0, last_done - first_done) / span


def last_call(now: float, deadline: float, margin: float, window: float) -> float:
    """The last moment an upstream batch can be created and still end by ``deadline - margin``."""
    return deadline - margin - window


def spill_needed(
    *,
    now: float,
    deadline: float,
    margin: float,
    window: float,
    remaining: int,
    pace: float | None,
    tick: float,
) -> int:
    """How many of the ``remaining`` lines to offload now (``tick``: seconds until the next
    look, so that the last call is not missed between two)."""
    if remaining <= 0 or now > last_call(now, deadline, margin, window):
        return 0
    if pace is None:
        final = now + 2 * tick >= last_call(now, deadline, margin, window)
        return remaining if final else 0
    capacity = pace * max(0.0, deadline - margin - now)
    return max(0, math.ceil(remaining - capacity))
