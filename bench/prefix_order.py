"""prefix order: a 2,000-line chat batch whose lines share 24 system prompts of about 800 words
at random (the lines shuffled), sent to the simulated engine (``max_seqs`` 32, a KV cache that
holds about 7 of the prompts) through lowtide at ``max_concurrency`` = ``max_seqs``, against a
bare aiohttp loop sending the same file in file order at the same concurrency, and the same
loop sending it in the best order (grouped by system prompt). Each figure is the engine's
makespan, from the first request it saw to its last answer, in model seconds.

Today lowtide sends in file order; with ``[scheduling] prefix_order = true`` (``--prefix-order``)
it is to group lines by shared prefix so that the engine's prefix cache is reused.

    .venv/bin/python bench/prefix_order.py [--lines 2000] [--prompts 24] [--words 800]
        [--cache-prompts 7] [--max-seqs 32] [--max-tokens 64] [--speed 4] [--prefix-order]
"""

from __future__ import annotations

import argparse
import random
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
    python_note,
    window,
    words,
    write_lines,
)

from lowtide.testing.engine_sim import EngineConfig, SimEngineProcess
from lowtide.testing.engine_sim.tokens import chat_tokens

NAME = "prefix order"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lines", type=int, default=2000)
    p.add_argument("--prompts", type=int, default=24, help="distinct system prompts")
    p.add_argument("--words", type=int, default=800, help="words per system prompt")
    p.add_argument("--cache-prompts", type=float, default=7, help="KV cache size, in prompts")
    p.add_argument("--max-seqs", type=int, default=32, help="the engine's max_seqs")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens per line")
    p.add_argument("--speed", type=float, default=4.0, help="the engine's model s per real s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--prefix-order", action="store_true", help="set [scheduling] prefix_order = true"
    )
    add_lowtide_flags(p)


@dataclass(frozen=True, slots=True)
class Workload:
    bodies: list[dict[str, Any]]  # in file order
    groups: list[int]  # each line's system prompt
    prompt_tokens: int  # mean tokens of a system prompt


def workload(lines: int, prompts: int, n_words: int, max_tokens: int, seed: int) -> Workload:
    rng = random.Random(seed)
    systems = [f"You are assistant {k}. " + words(rng, n_words) for k in range(prompts)]
    groups = [rng.randrange(prompts) for _ in range(lines)]  # already in random order
    bodies = [
        chat_body(systems[g], f"Question {i}: " + words(rng, 20), max_tokens)
        for i, g in enumerate(groups)
    ]
    sizes = [len(chat_tokens([{"role": "system", "content": s}], False)) for s in systems]
    return Workload(bodies, groups, round(sum(sizes) / len(sizes)))


def engine_config(args: argparse.Namespace, w: Workload) -> EngineConfig:
    block = 16
    kv = max(block, round(args.cache_prompts * w.prompt_tokens) // block * block)
    return EngineConfig(
        max_seqs=args.max_seqs, kv_tokens=kv, max_model_len=kv, speed=args.speed, block_size=block
    )


@dataclass(frozen=True, slots=True)
class Measured:
    makespan: float  # model seconds, first request to last answer
    hit_rate: float  # prefix cache hits / queries
    mean_batch: float  # running sequences, averaged over the busy steps
    preemptions: int
    behind_max_s: float


def measured(eng: SimEngineProcess) -> Measured:
    stats = eng.stats(records=True)
    w = window(stats["records"])
    return Measured(
        w.seconds,
        stats["prefix_hits"] / max(1, stats["prefix_queries"]),
        stats["seq_s"] / max(1e-9, stats["busy_s"]),
        stats["preemptions"],
        stats["behind_max_s"],
    )


def run(args: argparse.Namespace, workdir: Path) -> Report:
    if args.tiny:
        args.lines, args.prompts, args.words, args.cache_prompts = 60, 6, 100, 3
        args.max_seqs, args.max_tokens, args.speed = 4, 8, 50.0
    w = workload(args.lines, args.prompts, args.words, args.max_tokens, args.seed)
    path = workdir / "input.jsonl"
    write_lines(path, w.bodies)
    best = [b for _, b in sorted(zip(w.groups, w.bodies, strict=True), key=lambda gb: gb[0])]
    sections = list(args.lowtide_section)
    if args.prefix_order:
        sections.append("[scheduling]\nprefix_order = true")
    config = engine_config(args, w)
    results: dict[str, Measured] = {}
    with engine(workdir, config) as eng:
        for name, bodies in (("file order", w.bodies), ("best order", best)):
            eng.reset(cache=True)
            bare_loop(eng, bodies, args.max_seqs)
            results[name] = measured(eng)
        eng.reset(cache=True)
        batch = lowtide_batch(
            workdir / "server", eng, path, args.lines, args.max_seqs, args.lowtide_extra, sections
        )
        results["lowtide"] = measured(eng)
    return report(args, config, w, results, batch.seconds)


def report(
    args: argparse.Namespace,
    config: EngineConfig,
    w: Workload,
    results: dict[str, Measured],
    lowtide_real_s: float,
) -> Report:
    lt, file_, best = results["lowtide"], results["file order"], results["best order"]
    r = Report()
    speedup = file_.makespan / lt.makespan
    r.add(Row(NAME, "engine makespan, lowtide vs. bare loop in file order (speed-up)",
              f"{lt.makespan:,.1f} model s", f"{file_.makespan:,.1f} model s", speedup,
              "≥ 2×", speedup >= 2.0))  # fmt: skip
    to_best = lt.makespan / best.makespan
    r.add(Row(NAME, "engine makespan, lowtide vs. bare loop in best order",
              f"{lt.makespan:,.1f} model s", f"{best.makespan:,.1f} model s", to_best,
              "≤ 1.15×", to_best <= 1.15))  # fmt: skip
    for name, m in (
        ("lowtide", lt),
        ("bare loop, file order", file_),
        ("bare loop, best order", best),
    ):
        r.add(Row(NAME, f"{name}: prefix cache hit rate, mean batch, preemptions (context)",
                  f"{m.hit_rate:.0%}, {m.mean_batch:.1f} seqs, {m.preemptions}"))  # fmt: skip
    r.add(Row(NAME, "lowtide: create → completed, real time (context)", secs(lowtide_real_s)))
    r.note(
        f"{NAME}: {args.lines:,} lines, {args.prompts} system prompts of {args.words} words "
        f"(~{w.prompt_tokens:,} tokens each), {args.max_tokens} output tokens per line; engine "
        f"max_seqs {config.max_seqs}, KV cache {config.kv_tokens:,} tokens "
        f"(~{args.cache_prompts:g} prompts), speed {config.speed:g}; every sender at "
        f"concurrency {args.max_seqs}; lowtide config extras: "
        f"{'prefix_order' if args.prefix_order else 'none'}"
        + (f", {args.lowtide_extra}" if args.lowtide_extra else "")
    )
    worst = max(m.behind_max_s for m in results.values())
    r.note(behind_note(NAME, worst, config.speed))
    r.note(f"{NAME}: {python_note()}")
    return r


if __name__ == "__main__":
    main(__doc__, add_args, run)
