"""Waiting on an event with a deadline: the engine's loops wake on news or on their timer."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; clear it; True if it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.001))
    was_set = event.is_set()
    event.clear()
    return was_set
