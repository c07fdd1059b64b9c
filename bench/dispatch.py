"""dispatch: 50,000 requests through the engine (``lowtide serve``) to the fake upstream, which
answers at once on loopback: CPU seconds of the lowtide process per request, and requests per
second, against a bare aiohttp loop sending the same request bodies to the same upstream at
the same concurrency.

The lowtide figures run from ``batches.create`` to ``completed`` as the client sees it, so
they include validation, group commits and writing the result files. The fake upstream's own
CPU is measured too: it must not be what limits either side.

    .venv/bin/python bench/dispatch.py [--requests 50000] [--concurrency 64] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from common import (
    ENDPOINT,
    Report,
    Row,
    check_completed,
    client,
    cpu_seconds,
    main,
    per_s,
    pid_of,
    request_bodies,
    run_batch,
    server,
    upload,
    upstream,
    write_chat_file,
)

from lowtide.testing.harness import Upstream


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--concurrency", type=int, default=64)


@dataclass(frozen=True, slots=True)
class Side:
    requests: int
    seconds: float
    cpu: float  # CPU seconds of the sender: the lowtide process, or this one for the bare loop
    upstream_cpu: float

    @property
    def per_request_us(self) -> float:
        return self.cpu / self.requests * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _bare_loop(url: str, bodies: list[bytes], concurrency: int) -> int:
    """What the engine does at its barest: POST each body, read the answer; no state."""
    todo = iter(bodies)
    ok = 0
    headers = {"Content-Type": "application/json", "Authorization": "Bearer EMPTY"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for body in todo:
            async with session.post(url, data=body) as resp:
                await resp.read()
                ok += resp.status == 200

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


def _runner() -> asyncio.Runner:
    try:
        import uvloop  # lowtide serve runs on uvloop too (uvicorn picks it when installed)

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        return asyncio.Runner()


def bare_loop(up: Upstream, bodies: list[bytes], concurrency: int) -> Side:
    url = up.base_url + ENDPOINT.removeprefix("/v1")
    with _runner() as runner:
        up_cpu, own = cpu_seconds(up.proc.pid), time.process_time()
        t0 = time.perf_counter()
        ok = runner.run(_bare_loop(url, bodies, concurrency))
        seconds = time.perf_counter() - t0
    if ok != len(bodies):
        raise SystemExit(f"the bare loop got {ok} answers of {len(bodies)}")
    return Side(len(bodies), seconds, time.process_time() - own, cpu_seconds(up.proc.pid) - up_cpu)


def engine_run(workdir: Path, up: Upstream, path: Path, n: int, concurrency: int) -> Side:
    with server(workdir / "server", up, concurrency) as lt:
        c = client(lt)
        file_id = upload(c, path)
        pid = pid_of(lt)
        cpu, up_cpu = cpu_seconds(pid), cpu_seconds(up.proc.pid)
        # Poll slowly: the polls' own CPU is counted in the server's.
        run = run_batch(c, file_id, poll=0.1)
        cpu, up_cpu = cpu_seconds(pid) - cpu, cpu_seconds(up.proc.pid) - up_cpu
    check_completed(run, n)
    return Side(n, run.seconds, cpu, up_cpu)


def run(args: argparse.Namespace, workdir: Path) -> Report:
    n = 500 if args.tiny else args.requests
    concurrency = 16 if args.tiny else args.concurrency
    path = workdir / "input.jsonl"
    write_chat_file(path, n)
    bodies = request_bodies(n)
    with upstream(workdir) as up:
        bare_loop(up, bodies[: min(n, 2000)], concurrency)  # warm-up
        bare = bare_loop(up, bodies, concurrency)
        mine = engine_run(workdir, up, path, n, concurrency)
        again = bare_loop(up, bodies, concurrency)
    bare = max(bare, again, key=lambda side: side.rate)  # the better baseline counts
    report = Report()
    report.add(
        Row(
            "dispatch",
            f"CPU per request, lowtide process ({n:,} req, concurrency {concurrency})",
            f"{mine.per_request_us:.0f} µs",
            f"{bare.per_request_us:.0f} µs (bare loop)",
            mine.per_request_us / bare.per_request_us,
            "≤ 150 µs",
            mine.per_request_us <= 150,
        )
    )
    report.add(
        Row(
            "dispatch",
            "throughput, create → completed",
            per_s(n, mine.seconds),
            per_s(n, bare.seconds) + " (bare loop)",
            mine.rate / bare.rate,
            "≥ 0.50×",
            mine.rate / bare.rate >= 0.5,
        )
    )
    up_us = mine.upstream_cpu / n * 1e6
    report.add(
        Row(
            "dispatch",
            "fake upstream CPU per request (context)",
            f"{up_us:.0f} µs",
            f"{bare.upstream_cpu / n * 1e6:.0f} µs (bare loop)",
            None,
        )
    )
    busy = (mine.upstream_cpu / mine.seconds, bare.upstream_cpu / bare.seconds)
    verdict = (
        "it was not the bottleneck of either side"
        if max(busy) < 0.8
        else "it MAY HAVE BEEN the bottleneck (over 80% busy)"
    )
    report.note(
        f"dispatch: the fake upstream can serve {1e6 / up_us:,.0f} req/s on one core; it was "
        f"{busy[0]:.0%} busy during the lowtide run and {busy[1]:.0%} during the bare loop: "
        + verdict
    )
    return report


if __name__ == "__main__":
    main(__doc__, add_args, run)
