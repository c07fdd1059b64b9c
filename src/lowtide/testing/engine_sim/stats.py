"""What ``GET /_sim/stats`` reports: per-request records (model seconds) and their summaries.

Requests carry a tag (the ``X-Sim-Client`` header; ``default`` without one), so that the
latencies of an interactive client can be told apart from a batch's sent to the same engine.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from lowtide.testing.engine_sim.core import Seq


@dataclass(frozen=True, slots=True)
class Record:
    tag: str
    arrival: float
    admitted: float
    first_token: float
    finish: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    budget_tokens: int
    preemptions: int

    @classmethod
    def of(cls, seq: Seq) -> Record:
        assert seq.admitted_at is not None and seq.first_token_at is not None
        assert seq.finished_at is not None
        return cls(
            tag=seq.tag,
            arrival=seq.arrival,
            admitted=seq.admitted_at,
            first_token=seq.first_token_at,
            finish=seq.finished_at,
            prompt_tokens=seq.prompt_len,
            cached_tokens=seq.cached_tokens or 0,
            completion_tokens=seq.output,
            budget_tokens=seq.budget_tokens,
            preemptions=seq.preemptions,
        )

    @property
    def latency(self) -> float:
        return self.finish - self.arrival


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values`` (nan if empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, float | None]:
    def rounded(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 6)

    mean = sum(values) / len(values) if values else math.nan
    return {
        "mean": rounded(mean),
        "p50": rounded(percentile(values, 50)),
        "p90": rounded(percentile(values, 90)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values) if values else math.nan),
    }


class Stats:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.refused: Counter[tuple[str, int]] = Counter()  # (tag, status) -> count

    def finished(self, seq: Seq) -> None:
        self.records.append(Record.of(seq))

    def refuse(self, tag: str, status: int) -> None:
        self.refused[(tag, status)] += 1

    def by_tag(self) -> dict[str, dict[str, Any]]:
        tags = {r.tag for r in self.records} | {tag for tag, _ in self.refused}
        out = {}
        for tag in sorted(tags):
            mine = [r for r in self.records if r.tag == tag]
            out[tag] = {
                "finished": len(mine),
                "refused": {
                    str(status): n for (t, status), n in sorted(self.refused.items()) if t == tag
                },
                "first_arrival_s": min((r.arrival for r in mine), default=None),
                "last_finish_s": max((r.finish for r in mine), default=None),
                "latency_s": summary([r.latency for r in mine]),
                "queue_s": summary([r.admitted - r.arrival for r in mine]),
                "first_token_s": summary([r.first_token - r.arrival for r in mine]),
                "prompt_tokens": sum(r.prompt_tokens for r in mine),
                "cached_tokens": sum(r.cached_tokens for r in mine),
                "completion_tokens": sum(r.completion_tokens for r in mine),
            }
        return out

    def record_dicts(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records]
