"""makespan: 50,000 requests, each answered by the fake upstream after 200 ms, with
``max_concurrency = 256``, timed from ``batches.create`` to ``completed``, against the ideal
N × latency / concurrency (39 s at full size): what the engine adds to the time the backend
itself needs. For context it also times a bare aiohttp loop (``--bare-requests`` of them, at the
same concurrency, against the same upstream): what the fake upstream and an HTTP client alone
reach of the ideal, the last partial wave of requests and timer overshoot included.

    .venv/bin/python bench/makespan.py [--requests 50000] [--latency 0.2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    Report,
    Row,
    check_completed,
    client,
    main,
    request_bodies,
    run_batch,
    secs,
    server,
    upload,
    upstream,
    write_chat_file,
)
from dispatch import bare_loop


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--latency", type=float, default=0.2, help="upstream seconds per answer")
    p.add_argument("--concurrency", type=int, default=256, help="the backend's max_concurrency")
    p.add_argument("--bare-requests", type=int, help="for the context row (default: --requests)")


def run(args: argparse.Namespace, workdir: Path) -> Report:
    n, latency, concurrency = (
        (600, 0.05, 32) if args.tiny else (args.requests, args.latency, args.concurrency)
    )
    bare_n = 300 if args.tiny else (args.bare_requests or n)
    path = workdir / "input.jsonl"
    write_chat_file(path, n)
    with upstream(workdir, "--latency", str(latency)) as up:
        with server(workdir / "server", up, concurrency) as lt:
            c = client(lt)
            batch = run_batch(c, upload(c, path), poll=0.05)
        stats = up.stats()
        bare = bare_loop(up, request_bodies(bare_n), concurrency)
    check_completed(batch, n)
    ideal = n * latency / concurrency
    report = Report()
    report.add(
        Row(
            "makespan",
            f"create → completed ({n:,} req, {latency * 1000:.0f} ms, concurrency {concurrency})",
            secs(batch.seconds),
            f"{secs(ideal)} (ideal)",
            batch.seconds / ideal,
            "≤ 1.05×",
            batch.seconds / ideal <= 1.05,
        )
    )
    bare_ideal = bare_n * latency / concurrency
    report.add(
        Row(
            "makespan",
            f"bare aiohttp loop, {bare_n:,} req (context)",
            secs(bare.seconds),
            f"{secs(bare_ideal)} (ideal)",
            bare.seconds / bare_ideal,
        )
    )
    validating = batch.seen.get("in_progress", 0.0)
    finishing = batch.phase("finalizing") or 0.0
    report.note(
        f"makespan: validation took ≤ {validating:.2f} s, finalisation ≤ {finishing:.2f} s "
        f"(as seen by polls every 50 ms); the upstream saw at most "
        f"{stats['max_concurrency_seen']} requests at once and answered them "
        f"{stats['late_mean_ms']:.2f} ms (mean) / {stats['late_max_ms']:.1f} ms (max) after "
        "their latency was up, counted from their arrival"
    )
    return report


if __name__ == "__main__":
    main(__doc__, add_args, run)
