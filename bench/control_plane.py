"""control plane: p50 / p99 latency of ``batches.retrieve`` and ``batches.list`` (``openai``
SDK, one call at a time) while a 50,000-request batch dispatches at full speed, against the
same calls with the engine idle.

    .venv/bin/python bench/control_plane.py [--requests 50000] [--samples 400] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    ENDPOINT,
    TERMINAL,
    Report,
    Row,
    check_completed,
    client,
    main,
    run_batch,
    server,
    upload,
    upstream,
    write_chat_file,
)

HISTORY = 20  # finished batches in the store, so that a list call has a full page to return


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=50_000, help="requests of the busy batch")
    p.add_argument("--samples", type=int, default=400, help="calls of each kind per phase")
    p.add_argument("--concurrency", type=int, default=64)


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = call()
    return time.perf_counter() - t0, result


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def sample(c: Any, batch_id: str, count: int, busy: bool) -> dict[str, list[float]]:
    """Alternate retrieve and list calls; when ``busy``, stop once the batch is no longer
    in progress and keep only the calls made while it was."""
    got: dict[str, list[float]] = {"retrieve": [], "list": []}
    while len(got["retrieve"]) < count:
        seconds, batch = timed(lambda: c.batches.retrieve(batch_id))
        if busy and batch.status != "in_progress":
            break
        list_seconds, _ = timed(lambda: c.batches.list(limit=20))
        got["retrieve"].append(seconds)
        got["list"].append(list_seconds)
        time.sleep(0.005)
    return got


def wait_until(c: Any, batch_id: str, status: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := c.batches.retrieve(batch_id).status) != status:
        if time.monotonic() > deadline or now in TERMINAL:
            raise SystemExit(f"batch {batch_id} is {now}, never seen {status}")
        time.sleep(0.02)


def run(args: argparse.Namespace, workdir: Path) -> Report:
    n, count, history = (3_000, 20, 3) if args.tiny else (args.requests, args.samples, HISTORY)
    # At tiny size the upstream answers after 10 ms, so that the small batch surely dispatches
    # for a couple of seconds while the calls are sampled.
    slow = ["--latency", "0.01"] if args.tiny else []
    concurrency = 16 if args.tiny else args.concurrency
    small, big = workdir / "small.jsonl", workdir / "big.jsonl"
    write_chat_file(small, 10)
    write_chat_file(big, n)
    with upstream(workdir, *slow) as up, server(workdir / "server", up, concurrency) as lt:
        c = client(lt)
        small_id = upload(c, small)
        done = [run_batch(c, small_id, poll=0.02) for _ in range(history)]
        for finished in done:
            check_completed(finished, 10)
        idle = sample(c, done[-1].batch.id, count, busy=False)
        busy_batch = c.batches.create(
            input_file_id=upload(c, big), endpoint=ENDPOINT, completion_window="24h"
        )
        wait_until(c, busy_batch.id, "in_progress")
        busy = sample(c, busy_batch.id, count, busy=True)
        wait_until(c, busy_batch.id, "completed", timeout=900)
    return report(idle, busy, n)


def report(idle: dict[str, list[float]], busy: dict[str, list[float]], n: int) -> Report:
    out = Report()
    for kind in ("retrieve", "list"):
        if not busy[kind]:
            raise SystemExit("the batch finished before any call was made: use more --requests")
        p50, p99 = percentile(busy[kind], 50) * 1000, percentile(busy[kind], 99) * 1000
        i50, i99 = percentile(idle[kind], 50) * 1000, percentile(idle[kind], 99) * 1000
        out.add(
            Row(
                "control plane",
                f"batches.{kind} p50 / p99, {len(busy[kind])} calls while dispatching",
                f"{p50:.1f} / {p99:.1f} ms",
                f"{i50:.1f} / {i99:.1f} ms (idle)",
                p99 / i99,
                "p99 ≤ 3× idle, ≤ 50 ms",
                p99 <= 3 * i99 and p99 <= 50,
            )
        )
    out.note(f"control plane: the busy batch had {n:,} requests; the ratio compares the p99s")
    return out


if __name__ == "__main__":
    main(__doc__, add_args, run)
