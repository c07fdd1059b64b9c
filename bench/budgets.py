"""budgets: a batch sent to a simulated engine that enforces a requests-per-minute and a
tokens-per-minute budget (429 with Retry-After beyond them, counted per rolling model minute,
tokens as prompt + max_tokens at arrival, as OpenAI and DashScope count them): the share of
lowtide's sends that got a 429, and its throughput as a share of the limit. For context, the
same figures for a bare aiohttp loop at the same concurrency that waits out each Retry-After
(a naive client), and for a client that paces itself to the budget (what is possible).

Throughput is measured in whole model minutes from the first admitted request: each minute's
requests / rpm or tokens / tpm, whichever is higher (the limit that binds), averaged over the
minutes that ended before the last request was admitted (the sender still had work all
through them).

Without flags lowtide only reacts to 429s; ``--budgets`` sets the backend's ``rpm`` and ``tpm``
to the engine's limits, so that lowtide paces its sends itself, and its budget window to the
engine's model minute in real time (``[testing] rate_limit_window_seconds`` = 60 / speed).

    .venv/bin/python bench/budgets.py [--minutes 5] [--rpm 1000] [--tpm 500000]
        [--concurrency 64] [--speed 10] [--budgets]
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Report, Row, main, secs
from sim_common import (
    add_lowtide_flags,
    bare_loop,
    behind_note,
    chat_body,
    engine,
    lowtide_batch,
    paced_loop,
    python_note,
    words,
    write_lines,
)

from lowtide.testing.engine_sim import EngineConfig, SimEngineProcess
from lowtide.testing.engine_sim.config import BUDGET_WINDOW_S
from lowtide.testing.engine_sim.tokens import chat_tokens

NAME = "budgets"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=5.0, help="model minutes of load at the limit")
    p.add_argument("--rpm", type=int, default=1000, help="the engine's requests per minute")
    p.add_argument("--tpm", type=int, default=500_000, help="the engine's tokens per minute")
    p.add_argument("--concurrency", type=int, default=64, help="every sender's concurrency")
    p.add_argument("--speed", type=float, default=10.0, help="the engine's model s per real s")
    p.add_argument("--words", default="100,400", help="prompt words per line: low,high")
    p.add_argument("--max-tokens", default="50,300", help="output tokens per line: low,high")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--budgets", action="store_true", help="set the backend's rpm and tpm")
    add_lowtide_flags(p)


def cost(body: dict[str, Any]) -> int:
    """What the engine charges a line: prompt tokens + max_tokens."""
    return len(chat_tokens(body["messages"])) + int(body["max_tokens"])


def workload(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Enough lines to keep the budget's binding limit busy for ``--minutes``."""
    rng = random.Random(args.seed)
    w_low, w_high = (int(x) for x in args.words.split(","))
    t_low, t_high = (int(x) for x in args.max_tokens.split(","))

    def line(i: int) -> dict[str, Any]:
        text = f"Record {i}: " + words(rng, rng.randint(w_low, w_high))
        return chat_body(None, text, rng.randint(t_low, t_high))

    sample = [line(i) for i in range(200)]
    per_minute = min(
        args.rpm or math.inf, (args.tpm or math.inf) / (sum(map(cost, sample)) / len(sample))
    )
    n = max(len(sample), math.ceil(args.minutes * per_minute))
    return sample[:n] + [line(i) for i in range(len(sample), n)]


@dataclass(frozen=True, slots=True)
class Run:
    sent: int  # what the engine saw: admitted + refused
    refused: int  # 429s
    share: float  # throughput as a share of the binding limit (nan: under a whole minute)
    minutes: int  # whole minutes measured
    behind_max_s: float

    @property
    def refused_share(self) -> float:
        return self.refused / self.sent if self.sent else math.nan


def limit_share(records: Sequence[dict[str, Any]], rpm: int, tpm: int) -> tuple[float, int]:
    """The mean over whole minutes of the binding limit's use (see the module's doc)."""
    arrivals = sorted((r["arrival"], r["budget_tokens"]) for r in records)
    t0, last = arrivals[0][0], arrivals[-1][0]
    minutes = int((last - t0) // BUDGET_WINDOW_S)
    if minutes == 0:
        return math.nan, 0
    reqs, toks = [0] * minutes, [0] * minutes
    for at, tokens in arrivals:
        k = int((at - t0) // BUDGET_WINDOW_S)
        if k < minutes:
            reqs[k] += 1
            toks[k] += tokens
    uses = [
        max(reqs[k] / rpm if rpm else 0.0, toks[k] / tpm if tpm else 0.0) for k in range(minutes)
    ]
    return sum(uses) / minutes, minutes


def measure(eng: SimEngineProcess) -> Run:
    stats = eng.stats(records=True)
    records = stats["records"]
    refused = stats["by_tag"].get("default", {}).get("refused", {}).get("429", 0)
    share, minutes = limit_share(records, eng.config.rpm, eng.config.tpm)
    return Run(len(records) + refused, refused, share, minutes, stats["behind_max_s"])


def run(args: argparse.Namespace, workdir: Path) -> Report:
    if args.tiny:
        args.minutes, args.rpm, args.tpm, args.concurrency = 2.5, 60, 24_000, 8
        args.speed, args.words, args.max_tokens = 60.0, "20,60", "10,40"
    bodies = workload(args)
    path = workdir / "input.jsonl"
    write_lines(path, bodies)
    config = EngineConfig(rpm=args.rpm, tpm=args.tpm, speed=args.speed)
    extra = [*args.lowtide_extra]
    sections = [*args.lowtide_section]
    if args.budgets:
        extra += [f"rpm = {args.rpm}", f"tpm = {args.tpm}"]
        # The engine's minute is a model minute: lowtide's budget window must be as long in
        # real time, or it would pace to a tenth of the limit at speed 10.
        sections.append(f"[testing]\nrate_limit_window_seconds = {BUDGET_WINDOW_S / args.speed:g}")
    results: dict[str, Run] = {}
    with engine(workdir, config) as eng:
        eng.reset(cache=True)
        batch = lowtide_batch(
            workdir / "server", eng, path, len(bodies), args.concurrency, extra, sections,
        )  # fmt: skip
        results["lowtide"] = measure(eng)
        eng.reset(cache=True)
        bare_loop(eng, bodies, args.concurrency)
        results["naive"] = measure(eng)
        eng.reset(cache=True)
        paced_loop(eng, bodies, [cost(b) for b in bodies], args.concurrency)
        results["paced"] = measure(eng)
    notes = [*extra, *(section.replace("\n", " ") for section in sections)]
    return report(args, config, len(bodies), results, batch.seconds, notes)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1%}"


def _refusals(m: Run) -> str:
    return f"{_pct(m.refused_share)} ({m.refused:,} of {m.sent:,})"


def report(
    args: argparse.Namespace,
    config: EngineConfig,
    lines: int,
    results: dict[str, Run],
    real_s: float,
    extra: list[str],
) -> Report:
    lt, naive, paced = results["lowtide"], results["naive"], results["paced"]
    r = Report()
    r.add(Row(NAME, "sends answered 429, lowtide", _refusals(lt),
              f"{_pct(paced.refused_share)} (self-pacing client)", None, "≤ 1%",
              lt.refused_share <= 0.01))  # fmt: skip
    r.add(Row(NAME, f"throughput, share of the binding limit, lowtide ({lt.minutes} min)",
              _pct(lt.share), "100% (the limit)", lt.share, "≥ 0.90×",
              not math.isnan(lt.share) and lt.share >= 0.90))  # fmt: skip
    for name, m in (("naive bare loop", naive), ("self-pacing client", paced)):
        r.add(Row(NAME, f"{name}: 429 share, share of the limit (context)",
                  f"{_refusals(m)}, {_pct(m.share)}"))  # fmt: skip
    r.add(Row(NAME, "lowtide: create → completed, real time (context)", secs(real_s)))
    r.note(
        f"{NAME}: {lines:,} lines ({args.words} prompt words, {args.max_tokens} output tokens); "
        f"engine rpm {config.rpm:,}, tpm {config.tpm:,}, speed {config.speed:g}; every sender "
        f"at concurrency {args.concurrency}; lowtide config extras: "
        f"{'; '.join(extra) if extra else 'none'}"
    )
    worst = max(m.behind_max_s for m in results.values())
    r.note(behind_note(NAME, worst, config.speed))
    r.note(f"{NAME}: {python_note()}")
    return r


if __name__ == "__main__":
    main(__doc__, add_args, run)
