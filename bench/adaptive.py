"""adaptive concurrency: a 2,000-line batch sent to the simulated engine (``max_seqs`` 32)
through lowtide with ``max_concurrency`` 256, against bare aiohttp loops at fixed concurrencies
(8, 16, 32, 64, 128, 256 by default), each a baseline measured in the same run.

(a) With the engine's metrics (and an interactive client sending 4 requests per model second
straight to the engine): lowtide's batch throughput against the best fixed concurrency's, and
the interactive p99 latency against its p99 with the engine otherwise idle.
(b) Without metrics (no interactive client): lowtide's batch throughput against the best fixed
concurrency's, and the engine's peak waiting queue.

Without flags lowtide sends at its fixed ``max_concurrency``; ``--adaptive`` sets the backend's
``concurrency = "adaptive"`` (and ``metrics_url``: the engine's page in (a), none in (b);
``--reserve N`` sets ``reserve`` in (a)).
Throughput is batch requests per model second from the first request the engine saw to its
last answer; latencies are the engine's, arrival to last token, in model seconds.

    .venv/bin/python bench/adaptive.py [--lines 2000] [--max-seqs 32] [--concurrency 256]
        [--sweep 8,16,32,64,128,256] [--speed 10] [--parts ab] [--adaptive] [--reserve N]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Report, Row, main, secs
from sim_common import (
    INTERACTIVE,
    Interactive,
    add_lowtide_flags,
    bare_loop,
    behind_note,
    chat_body,
    engine,
    latencies,
    lowtide_batch,
    p99,
    python_note,
    window,
    words,
    write_lines,
)

from lowtide.testing.engine_sim import EngineConfig, SimEngineProcess

NAME = "adaptive"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=2000)
    p.add_argument("--max-seqs", type=int, default=32, help="the engine's max_seqs")
    p.add_argument("--concurrency", type=int, default=256, help="lowtide's max_concurrency")
    p.add_argument("--sweep", default="8,16,32,64,128,256", help="fixed concurrencies")
    p.add_argument("--speed", type=float, default=10.0, help="the engine's model s per real s")
    p.add_argument("--parts", default="ab", help="a (with metrics), b (without), or ab")
    p.add_argument("--words", type=int, default=150, help="words per batch prompt")
    p.add_argument("--max-tokens", default="64,192", help="batch output tokens: low,high")
    p.add_argument("--interactive-rate", type=float, default=4.0, help="per model second")
    p.add_argument("--interactive-tokens", type=int, default=64, help="their output tokens")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="model s of idle baseline")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--adaptive", action="store_true", help='set concurrency = "adaptive"')
    p.add_argument("--reserve", type=int, help="set the backend's reserve (part a)")
    add_lowtide_flags(p)


def batch_bodies(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    low, high = (int(x) for x in args.max_tokens.split(","))
    return [
        chat_body(None, f"Document {i}: " + words(rng, args.words), rng.randint(low, high))
        for i in range(args.lines)
    ]


def interactive_bodies(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed + 1)
    system = "You are a helpful assistant. Answer briefly."
    return [
        chat_body(system, f"User question {i}: " + words(rng, 40), args.interactive_tokens)
        for i in range(100)
    ]


@dataclass(frozen=True, slots=True)
class Run:
    throughput: float  # batch requests per model second
    tokens_per_s: float
    interactive_p99: float | None  # model seconds, of those that arrived during the batch
    peak_waiting: int
    behind_max_s: float


def measure(eng: SimEngineProcess, with_interactive: bool) -> Run:
    stats = eng.stats(records=True)
    w = window(stats["records"])
    p = p99(latencies(stats["records"], INTERACTIVE, w)) if with_interactive else None
    return Run(
        w.rate,
        w.completion_tokens / w.seconds,
        p,
        stats["peak_waiting"],
        stats["behind_max_s"],
    )


def sweep_and_lowtide(
    args: argparse.Namespace,
    workdir: Path,
    eng: SimEngineProcess,
    bodies: list[dict[str, Any]],
    extra: list[str],
    with_interactive: bool,
) -> tuple[dict[int, Run], Run, float]:
    """Every fixed concurrency, then lowtide; with or without the interactive client."""
    interactive = interactive_bodies(args)
    fixed: dict[int, Run] = {}
    part = "a" if with_interactive else "b"

    def load(send: Any) -> Any:
        eng.reset(cache=True)
        if not with_interactive:
            return send()
        with Interactive(eng, interactive, args.interactive_rate):
            return send()

    for c in (int(x) for x in args.sweep.split(",")):
        load(lambda c=c: bare_loop(eng, bodies, c))
        fixed[c] = measure(eng, with_interactive)
    path = workdir / "input.jsonl"
    batch = load(
        lambda: lowtide_batch(
            workdir / f"server-{part}",
            eng,
            path,
            len(bodies),
            args.concurrency,
            extra,
            args.lowtide_section,
        )
    )
    return fixed, measure(eng, with_interactive), batch.seconds


def idle_p99(args: argparse.Namespace, eng: SimEngineProcess) -> tuple[float, int]:
    """The interactive client's p99 with nothing else on the engine."""
    eng.reset(cache=True)
    with Interactive(eng, interactive_bodies(args), args.interactive_rate):
        time.sleep(args.idle_seconds / args.speed)  # the length of the load, not a wait
    lat = latencies(eng.stats(records=True)["records"], INTERACTIVE)
    return p99(lat), len(lat)


def run(args: argparse.Namespace, workdir: Path) -> Report:
    if args.tiny:
        args.lines, args.max_seqs, args.concurrency, args.sweep = 40, 4, 16, "4,16"
        args.speed, args.words, args.max_tokens = 50.0, 30, "8,16"
        args.interactive_tokens, args.idle_seconds = 8, 10.0
    bodies = batch_bodies(args)
    write_lines(workdir / "input.jsonl", bodies)
    config = EngineConfig(max_seqs=args.max_seqs, speed=args.speed)
    adaptive = ['concurrency = "adaptive"'] if args.adaptive else []
    reserve = [f"reserve = {args.reserve}"] if args.reserve is not None else []
    metrics = ['metrics_url = "{engine_url}/metrics"'] if args.adaptive else []
    r = Report()
    behind = 0.0
    with engine(workdir, config) as eng:
        if "a" in args.parts:
            idle, n_idle = idle_p99(args, eng)
            extra_a = [*adaptive, *metrics, *reserve, *args.lowtide_extra]
            fixed, lt, real_s = sweep_and_lowtide(args, workdir, eng, bodies, extra_a, True)
            report_a(r, args, fixed, lt, real_s, idle, n_idle, extra_a)
            behind = max([behind, lt.behind_max_s, *(f.behind_max_s for f in fixed.values())])
        if "b" in args.parts:
            # Without metrics: the backend's default metrics_url (from base_url) would read them.
            no_metrics = ['metrics_url = ""'] if args.adaptive else []
            extra_b = [*adaptive, *no_metrics, *args.lowtide_extra]
            fixed, lt, real_s = sweep_and_lowtide(args, workdir, eng, bodies, extra_b, False)
            report_b(r, args, fixed, lt, real_s, extra_b)
            behind = max([behind, lt.behind_max_s, *(f.behind_max_s for f in fixed.values())])
    r.note(
        f"{NAME}: {args.lines:,} batch lines of {args.words} words, {args.max_tokens} output "
        f"tokens (uniform); engine max_seqs {config.max_seqs}, KV cache {config.kv_tokens:,} "
        f"tokens, speed {config.speed:g}; lowtide max_concurrency {args.concurrency}"
    )
    r.note(behind_note(NAME, behind, config.speed))
    r.note(f"{NAME}: {python_note()}")
    return r


def _best(fixed: dict[int, Run]) -> tuple[int, Run]:
    return max(fixed.items(), key=lambda item: item[1].throughput)


def _extras(extra: list[str]) -> str:
    return "; ".join(extra) if extra else "none"


def report_a(
    r: Report,
    args: argparse.Namespace,
    fixed: dict[int, Run],
    lt: Run,
    real_s: float,
    idle: float,
    n_idle: int,
    extra: list[str],
) -> None:
    best_c, best = _best(fixed)
    share = lt.throughput / best.throughput
    r.add(Row(NAME, "(a) batch throughput beside an interactive client, lowtide",
              f"{lt.throughput:.2f} req/s", f"{best.throughput:.2f} req/s (fixed {best_c})",
              share, "≥ 0.80×", share >= 0.80))  # fmt: skip
    assert lt.interactive_p99 is not None
    slower = lt.interactive_p99 / idle
    r.add(Row(NAME, "(a) interactive p99 latency during the batch, lowtide",
              f"{lt.interactive_p99:.2f} s", f"{idle:.2f} s (idle engine)", slower,
              "≤ 2.5×", slower <= 2.5))  # fmt: skip
    for c, f in sorted(fixed.items()):
        assert f.interactive_p99 is not None
        r.add(Row(NAME, f"(a) fixed {c}: throughput, interactive p99, peak waiting (context)",
                  f"{f.throughput:.2f} req/s, {f.interactive_p99:.2f} s, {f.peak_waiting}",
                  f"{f.interactive_p99 / idle:.1f}× idle p99"))  # fmt: skip
    r.add(Row(NAME, "(a) lowtide: create → completed, real time (context)", secs(real_s)))
    r.note(
        f"{NAME}: (a) interactive client: {args.interactive_rate:g} req per model s (Poisson), "
        f"{args.interactive_tokens} output tokens; idle p99 from {n_idle} requests; lowtide "
        f"config extras: {_extras(extra)}"
    )


def report_b(
    r: Report,
    args: argparse.Namespace,
    fixed: dict[int, Run],
    lt: Run,
    real_s: float,
    extra: list[str],
) -> None:
    best_c, best = _best(fixed)
    share = lt.throughput / best.throughput
    r.add(Row(NAME, "(b) batch throughput without metrics, lowtide",
              f"{lt.throughput:.2f} req/s", f"{best.throughput:.2f} req/s (fixed {best_c})",
              share, "≥ 0.90×", share >= 0.90))  # fmt: skip
    limit = args.max_seqs // 2
    r.add(Row(NAME, "(b) engine's peak waiting queue, lowtide", f"{lt.peak_waiting}",
              f"{limit} (max_seqs / 2)", lt.peak_waiting / max(1, limit), f"≤ {limit}",
              lt.peak_waiting <= limit))  # fmt: skip
    for c, f in sorted(fixed.items()):
        r.add(Row(NAME, f"(b) fixed {c}: throughput, peak waiting (context)",
                  f"{f.throughput:.2f} req/s, {f.peak_waiting}"))  # fmt: skip
    r.add(Row(NAME, "(b) lowtide: create → completed, real time (context)", secs(real_s)))
    r.note(f"{NAME}: (b) lowtide config extras: {_extras(extra)}")


if __name__ == "__main__":
    main(__doc__, add_args, run)
