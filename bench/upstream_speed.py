"""How fast is the fake upstream? It must never be the bottleneck of a lowtide benchmark.

Starts ``python -m lowtide.testing.upstream`` in a child process, sends it ``--requests``
requests from ``--concurrency`` aiohttp workers, and prints requests/s and the upstream's CPU
time per request (utime + stime from /proc/<pid>/stat). ``1 / cpu-per-request`` is what one
core of the upstream can serve, whatever the client manages to send.

    .venv/bin/python bench/upstream_speed.py --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from lowtide.testing.children import ending_children
from lowtide.testing.upstream import UpstreamConfig, UpstreamProcess

_ROUTES: dict[str, tuple[str, Callable[[int], dict[str, Any]]]] = {
    "chat": (
        "/v1/chat/completions",
        lambda i: {
            "model": "fake-model",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Say something about line {i}."},
            ],
            "max_tokens": 32,
        },
    ),
    "embeddings": ("/v1/embeddings", lambda i: {"model": "fake-model", "input": f"line {i}"}),
    "completions": ("/v1/completions", lambda i: {"model": "fake-model", "prompt": f"line {i}"}),
    "responses": ("/v1/responses", lambda i: {"model": "fake-model", "input": f"line {i}"}),
}


@dataclass
class _Run:
    requests: int
    ok: int
    wall_s: float
    upstream_cpu_s: float
    client_cpu_s: float


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces, so split after its closing parenthesis; utime and
        # stime are fields 14 and 15 of the whole line, i.e. 11 and 12 after the name.
        after_name = f.read().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _hammer(url: str, route: str, start: int, count: int, concurrency: int) -> int:
    """Send ``count`` requests; returns how many were answered 200."""
    path, make_body = _ROUTES[route]
    bodies = iter(range(start, start + count))
    ok = 0
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for i in bodies:
            async with session.post(
                url + path, data=orjson.dumps(make_body(i)), headers=headers
            ) as r:
                await r.read()
                ok += r.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


async def _measure(url: str, pid: int, args: argparse.Namespace) -> _Run:
    await _hammer(url, args.route, 0, args.warmup, args.concurrency)
    cpu0, own0, t0 = _process_cpu_seconds(pid), _own_cpu_seconds(), time.perf_counter()
    ok = await _hammer(url, args.route, args.warmup, args.requests, args.concurrency)
    wall = time.perf_counter() - t0
    return _Run(
        requests=args.requests,
        ok=ok,
        wall_s=wall,
        upstream_cpu_s=_process_cpu_seconds(pid) - cpu0,
        client_cpu_s=_own_cpu_seconds() - own0,
    )


def _print(run: _Run, args: argparse.Namespace) -> None:
    per_request = run.upstream_cpu_s / run.requests
    rows = [
        ("route", args.route),
        ("requests (200 OK)", f"{run.requests} ({run.ok})"),
        ("concurrency", str(args.concurrency)),
        ("wall seconds", f"{run.wall_s:.2f}"),
        ("requests/s (end to end)", f"{run.requests / run.wall_s:,.0f}"),
        ("upstream CPU seconds", f"{run.upstream_cpu_s:.2f}"),
        ("upstream CPU µs/request", f"{per_request * 1e6:.0f}"),
        ("upstream capacity, req/s/core", f"{1 / per_request:,.0f}" if per_request else "n/a"),
        ("client CPU seconds", f"{run.client_cpu_s:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _uvloop_runner(use_uvloop: bool) -> asyncio.Runner:
    if use_uvloop:
        try:
            import uvloop  # the client is the slow side, so give it the faster loop too

            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            pass
    return asyncio.Runner()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--route", choices=sorted(_ROUTES), default="chat")
    parser.add_argument("--no-uvloop", action="store_true", help="stock asyncio on both sides")
    args = parser.parse_args()
    extra = ["--no-uvloop"] if args.no_uvloop else []
    with (
        ending_children(),  # the upstream process ends however this script does
        UpstreamProcess(UpstreamConfig(seed=1), extra_args=extra) as upstream,
        _uvloop_runner(not args.no_uvloop) as runner,
    ):
        run = runner.run(_measure(upstream.url, upstream.pid, args))
    _print(run, args)


if __name__ == "__main__":
    main()
