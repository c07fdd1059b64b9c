"""What the engines see of the backends, and how the API puts their views together.

Every engine reports, per backend, whether it answers, since when, why not, and how many
requests the engine may have in flight to it now (``BackendReport``). In a fleet several
engines report on the same backend; ``summarize`` turns their views into one per backend, as
``/ready``, ``/v1/backends`` and a batch's ``waiting_for`` show it:

- ``up`` if any engine that reported lately reaches it (one engine's network trouble does not
  make a backend look down when others use it), ``down`` if every one of them fails to,
  ``unknown`` when no engine reported lately (an API-only process with no worker running);
- the limit and the requests in flight are the sums over the engines: the fleet's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

#: Seconds between two reports of an engine (and at once on a change of state).
REPORT_EVERY = 2.0
#: A report older than this is ignored: its engine has stopped or died.
STALE_AFTER = 30.0

State = Literal["up", "down", "unknown"]


@dataclass(frozen=True, slots=True)
class BackendReport:
    """One engine's view of one backend (``since``, ``updated_at``: Unix seconds)."""

    backend: str
    owner: str
    up: bool
    since: float
    error: str | None
    limit: int
    in_flight: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend as the fleet sees it."""

    name: str
    models: tuple[str, ...]
    state: State
    #: When it went into that state (the earliest down-report while down); None if unknown.
    since: float | None
    #: Why it is (or was last) down.
    error: str | None
    limit: int
    in_flight: int


def summarize(
    backends: Mapping[str, Sequence[str]], reports: Iterable[BackendReport]
) -> list[BackendView]:
    """One view per configured backend (name -> its models), in the configured order."""
    by_name: dict[str, list[BackendReport]] = {}
    for report in reports:
        by_name.setdefault(report.backend, []).append(report)
    return [_view(name, tuple(models), by_name.get(name, [])) for name, models in backends.items()]


def _view(name: str, models: tuple[str, ...], reports: list[BackendReport]) -> BackendView:
    if not reports:
        return BackendView(name, models, "unknown", None, None, 0, 0)
    up = [r for r in reports if r.up]
    latest = max(reports, key=lambda r: r.updated_at)
    error = next((r.error for r in sorted(reports, key=lambda r: -r.since) if r.error), None)
    limit, in_flight = sum(r.limit for r in reports), sum(r.in_flight for r in reports)
    if up:
        return BackendView(name, models, "up", min(r.since for r in up), error, limit, in_flight)
    since = min(r.since for r in reports)
    return BackendView(name, models, "down", since, latest.error or error, limit, in_flight)


def waiting_for(views: Sequence[BackendView], model: str) -> BackendView | None:
    """The backend a batch of ``model`` waits for: when every backend that serves the model
    is down, the one down the longest; None while any of them is up (or none is known)."""
    serving = [v for v in views if model in v.models]
    if not serving or any(v.state != "down" for v in serving):
        return None
    return min(serving, key=lambda v: v.since or 0.0)
