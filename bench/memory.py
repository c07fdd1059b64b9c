"""memory: the peak RSS (VmHWM) of ``lowtide serve`` over the whole life of a 5,000- and of a
50,000-request batch (upload, validation, dispatch, finalisation, download of the output),
each in a fresh server process; the 5,000 run is the baseline: memory must not grow with the
size of a batch.

    .venv/bin/python bench/memory.py [--small 5000] [--requests 50000] [--tiny]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    MIB,
    Report,
    Row,
    check_completed,
    client,
    main,
    mib,
    peak_rss,
    pid_of,
    run_batch,
    server,
    upload,
    upstream,
    write_chat_file,
)

from lowtide.testing.harness import Upstream


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--small", type=int, default=5_000, help="requests of the baseline batch")
    p.add_argument("--requests", type=int, default=50_000, help="requests of the big batch")
    p.add_argument("--concurrency", type=int, default=64)


def peak_for(workdir: Path, up: Upstream, n: int, concurrency: int) -> int:
    """Peak RSS of a fresh server that runs one batch of ``n`` requests start to end."""
    path = workdir / f"input-{n}.jsonl"
    write_chat_file(path, n)
    with server(workdir / f"server-{n}", up, concurrency) as lt:
        c = client(lt)
        batch = run_batch(c, upload(c, path), poll=0.1)
        check_completed(batch, n)
        size = sum(len(chunk) for chunk in c.files.content(batch.batch.output_file_id).iter_bytes())
        if size == 0:
            raise SystemExit("the output file is empty")
        return peak_rss(pid_of(lt))


def run(args: argparse.Namespace, workdir: Path) -> Report:
    small, big = (50, 500) if args.tiny else (args.small, args.requests)
    with upstream(workdir) as up:
        base = peak_for(workdir, up, small, args.concurrency)
        peak = peak_for(workdir, up, big, args.concurrency)
    report = Report()
    report.add(
        Row(
            "memory",
            f"server peak RSS, {big:,} requests",
            mib(peak),
            f"{mib(base)} ({small:,} requests)",
            peak / base,
            "≤ 1.20× and ≤ 250 MiB",
            peak / base <= 1.2 and peak <= 250 * MIB,
        )
    )
    return report


if __name__ == "__main__":
    main(__doc__, add_args, run)
