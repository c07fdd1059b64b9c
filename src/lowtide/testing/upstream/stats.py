"""The fake upstream's counters, as ``GET /_fake/stats`` shows them."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Stats:
    #: ``GET /v1/models``: a client's health probes, counted apart from the requests below
    #: (they are not model work: no latency, no faults, no concurrency, no pauses).
    model_listings: int = 0
    requests: int = 0
    in_flight: int = 0
    max_concurrency_seen: int = 0
    ok: int = 0
    rate_limited: int = 0
    storm_rejected: int = 0
    errors_injected: int = 0
    fail_marker: int = 0
    fail_once: int = 0
    garbage: int = 0
    dropped: int = 0
    hung: int = 0
    down_rejected: int = 0
    unauthorized: int = 0
    bad_requests: int = 0
    client_disconnects: int = 0
    early_requests: int = 0
    early_same_key: int = 0
    early_max_ms: float = 0.0
    delayed: int = 0
    late_sum_ms: float = 0.0
    late_max_ms: float = 0.0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    per_key: Counter[str] = field(default_factory=Counter)

    def note_late(self, late: float) -> None:
        """A delayed answer's handler woke ``late`` seconds after the answer was due."""
        self.delayed += 1
        self.late_sum_ms += late * 1000.0
        self.late_max_ms = max(self.late_max_ms, late * 1000.0)

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("by_route", "by_status", "per_key", "late_sum_ms")
        }
        out["early_max_ms"] = round(self.early_max_ms, 3)
        out["late_mean_ms"] = round(self.late_sum_ms / max(1, self.delayed), 3)
        out["late_max_ms"] = round(self.late_max_ms, 3)
        out["by_route"] = dict(self.by_route)
        out["by_status"] = {str(status): n for status, n in sorted(self.by_status.items())}
        out["distinct_keys"] = len(self.per_key)
        return out
