"""Slices of a backend's shared rpm/tpm budget (``lowtide.engine.budgets``): what a worker is
granted of what it asks, given what the fleet's live slices hold.

A slice row counts against the budget until ``until`` (the end of its use) plus the window;
both stores compute the grant here, in the transaction that reads the live slices under the
backend's lock, so that two workers never take the same room.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Grant:
    """``slice_id`` None: nothing granted; ask again in ``retry_after`` seconds."""

    slice_id: int | None
    requests: int = 0
    tokens: int = 0
    retry_after: float = 0.0


def room(
    want_requests: int,
    want_tokens: int,
    need_tokens: int,
    rpm: int,
    tpm: int,
    used_requests: int,
    used_tokens: int,
) -> tuple[int, int] | None:
    """(requests, tokens) to grant, or None when there is not room for one request of
    ``need_tokens`` (a limit of 0 is no limit: what is wanted is granted)."""
    requests = want_requests if not rpm else min(want_requests, rpm - used_requests)
    if not tpm:
        tokens = want_tokens
    else:
        free = tpm - used_tokens
        # A request larger than the whole budget goes alone into an empty window.
        if free < min(need_tokens, tpm):
            return None
        tokens = max(min(want_tokens, free), min(need_tokens, tpm))
    if requests < 1:
        return None
    return requests, tokens


def retry_after(oldest_until: float | None, window: float, now: float) -> float:
    """Seconds until the oldest live slice leaves the window."""
    if oldest_until is None:
        return 0.0
    return max(0.0, oldest_until + window - now)
