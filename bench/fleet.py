"""fleet: requests per second of a fleet on PostgreSQL with 1, 2 and 4 ``lowtide worker``
processes (and one ``lowtide serve --api-only``), on one database (the machine's PostgreSQL,
``$LOWTIDE_TEST_PG_URL``) and one local file store, against the fake upstream answering at
once (``--latency`` to change that) with a ``max_concurrency`` generous enough never to be the
limit: the ratio to 1 worker shows how far adding workers helps on this machine.

The rate is the dispatch phase's (from the first poll that sees the batch ``in_progress`` to
the first that sees it past it), so that validation and finalisation, which one worker does
alone, do not blur it. The CPU time of every process in that phase (workers, API, fake
upstream, PostgreSQL's processes serving this database) is read from /proc: with all of them
on the same cores, it says where the machine's CPU went, and so what limits the fleet.

    .venv/bin/python bench/fleet.py [--requests 20000] [--workers 1,2,4] [--latency 0]
        [--concurrency 256] [--rounds 3] [--tiny]

Each count runs ``--rounds`` times, the counts taking turns, and the fastest run of each
count is reported (all the rates are in the notes): on a shared machine, the run least slowed
by other work is the one that says most about lowtide.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common import (
    TERMINAL,
    Report,
    Row,
    client,
    config_toml,
    cpu_seconds,
    machine_busy,
    main,
    upload,
    upstream,
    write_chat_file,
)

from lowtide.testing import postgres as pg
from lowtide.testing.harness import Lowtide, Upstream, Worker


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--workers", default="1,2,4", help="worker counts to run, comma-separated")
    p.add_argument("--latency", type=float, default=0.0, help="upstream seconds per answer")
    p.add_argument("--concurrency", type=int, default=256, help="the backend's max_concurrency")
    p.add_argument(
        "--rounds", type=int, default=3, help="runs of each worker count; the fastest counts"
    )


# ------------------------------------------------------------------------------- CPU from /proc


def postgres_pids(database: str) -> list[int]:
    """PostgreSQL's processes that work for ``database``: its backends (their title names the
    database) and the shared ones (WAL writer, checkpointer...; no client address in their
    title), not the backends of other databases on the same server."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(entry.path, "comm").read_text().strip() != "postgres":
                continue
            title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            client_backend = "(" in title or "[local]" in title
            if database in title or not client_backend:
                pids.append(int(entry.name))
    return pids


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that has just gone
            out[pid] = cpu_seconds(pid)
    return out


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds used in the dispatch phase, per part of the system."""

    workers: list[float]
    api: float
    upstream: float
    postgres: float
    machine: float  # every process on the machine (this script and strangers included)

    @property
    def total(self) -> float:
        return sum(self.workers) + self.api + self.upstream + self.postgres


class Meter:
    def __init__(self, fleet: Fleet, up: Upstream, database: str) -> None:
        self.fleet, self.up, self.database = fleet, up, database
        self.before = self._read()
        self.busy_before = machine_busy()[0]

    def _read(self) -> dict[str, dict[int, float]]:
        return {
            "workers": cpu_of([w.pid for w in self.fleet.workers]),
            "api": cpu_of([self.fleet.api_pid]),
            "upstream": cpu_of([self.up.proc.pid]),
            "postgres": cpu_of(postgres_pids(self.database)),
        }

    def stop(self) -> Usage:
        after = self._read()

        def used(part: str) -> dict[int, float]:
            # A process started during the phase (a new database backend) counts from zero.
            return {pid: t - self.before[part].get(pid, 0.0) for pid, t in after[part].items()}

        return Usage(
            workers=list(used("workers").values()),
            api=sum(used("api").values()),
            upstream=sum(used("upstream").values()),
            postgres=sum(used("postgres").values()),
            machine=machine_busy()[0] - self.busy_before,
        )


# ------------------------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    api: Lowtide
    workers: list[Worker]

    @property
    def api_pid(self) -> int:
        assert self.api.proc is not None
        return self.api.proc.pid


def fleet_toml(up: Upstream, database_url: str, files: Path, concurrency: int) -> str:
    shared = f'[server]\ndatabase_url = "{database_url}"\nstorage_url = "file://{files}"\n'
    return config_toml(up, concurrency, shared)


@contextlib.contextmanager
def fleet(workdir: Path, toml: str, workers: int) -> Iterator[Fleet]:
    (workdir / "api").mkdir(parents=True)
    api = Lowtide(workdir / "api", toml, extra_args=["--api-only"])
    running = Fleet(api, [])
    try:
        api.start()
        for i in range(workers):
            worker = Worker(workdir / f"worker{i}", api.config_path)
            running.workers.append(worker)
            worker.start()
        yield running
    finally:
        for worker in running.workers:
            worker.stop()
        api.stop()


@contextlib.contextmanager
def database(template: str) -> Iterator[tuple[str, str]]:
    name = pg.run_sync(pg.create_database(template=template))
    try:
        yield name, pg.url_of(name)
    finally:
        pg.run_sync(pg.drop_database(name))


@dataclass(frozen=True, slots=True)
class Result:
    workers: int
    requests: int
    dispatch_seconds: float
    total_seconds: float
    usage: Usage

    @property
    def rate(self) -> float:
        return self.requests / self.dispatch_seconds


def run_one(
    workdir: Path, up: Upstream, template: str, path: Path, n: int, workers: int, concurrency: int
) -> Result:
    with database(template) as (name, url):
        toml = fleet_toml(up, url, workdir / "files", concurrency)
        with fleet(workdir, toml, workers) as running:
            c = client(running.api)
            file_id = upload(c, path)
            t0 = time.perf_counter()
            batch = c.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            meter: Meter | None = None
            started = ended = 0.0
            usage: Usage | None = None
            while batch.status not in TERMINAL:
                time.sleep(0.05)
                batch = c.batches.retrieve(batch.id)
                now = time.perf_counter()
                if meter is None and batch.status == "in_progress":
                    meter, started = Meter(running, up, name), now
                if meter is not None and usage is None and batch.status != "in_progress":
                    usage, ended = meter.stop(), now
            total = time.perf_counter() - t0
    counts = batch.request_counts
    if batch.status != "completed" or counts is None or counts.completed != n:
        raise SystemExit(f"batch {batch.id} ended {batch.status} with {counts}")
    if usage is None:
        raise SystemExit("the batch ran too fast to see its dispatch phase: use more --requests")
    return Result(workers, n, ended - started, total, usage)


def run(args: argparse.Namespace, workdir: Path) -> Report:
    n = 600 if args.tiny else args.requests
    counts = [1, 2] if args.tiny else [int(x) for x in args.workers.split(",")]
    if counts[0] != 1:
        counts.insert(0, 1)  # the baseline
    path = workdir / "input.jsonl"
    write_chat_file(path, n)
    problem = pg.run_sync(pg.reachable())
    if problem:
        raise SystemExit(problem)
    template = pg.run_sync(pg.create_template())
    runs: dict[int, list[Result]] = {count: [] for count in counts}
    try:
        with upstream(workdir, "--latency", str(args.latency)) as up:
            # Rounds of every count in turn, so that a burst of other work on the machine
            # hits one run of each count rather than all the runs of one.
            for round_ in range(1 if args.tiny else args.rounds):
                for count in counts:
                    where = workdir / f"round{round_}-workers{count}"
                    runs[count].append(
                        run_one(where, up, template, path, n, count, args.concurrency)
                    )
    finally:
        pg.run_sync(pg.drop_database(template))
    return report(runs, args)


def report(runs: dict[int, list[Result]], args: argparse.Namespace) -> Report:
    # The fastest run of each count: the one least slowed by other work on the machine.
    results = [max(rs, key=lambda r: r.rate) for rs in runs.values()]
    base = results[0]
    out = Report()
    latency = "at once" if args.latency == 0 else f"after {args.latency * 1000:g} ms"
    for r in results:
        u = r.usage
        cores = u.total / r.dispatch_seconds
        out.add(
            Row(
                "fleet",
                f"{r.workers} worker{'s' if r.workers > 1 else ''}: requests/s in dispatch",
                f"{r.rate:,.0f} req/s",
                f"{base.rate:,.0f} req/s (1 worker)",
                r.rate / base.rate,
            )
        )
        per_k = 1000 / r.requests  # CPU seconds per 1,000 requests = ms per request
        workers = " + ".join(f"{w * per_k:.2f}" for w in sorted(u.workers, reverse=True))
        others = max(0.0, u.machine - u.total) / r.dispatch_seconds
        out.note(
            f"fleet, {r.workers} worker(s): CPU ms per request: workers {workers}, "
            f"API {u.api * per_k:.2f}, fake upstream {u.upstream * per_k:.2f}, PostgreSQL "
            f"{u.postgres * per_k:.2f}; these processes kept {cores:.2f} of the "
            f"{os.cpu_count()} cores busy, other processes on the machine {others:.2f}; "
            f"{r.total_seconds:.1f} s from create to completed"
        )
    out.note(
        f"fleet: {base.requests:,} requests per run, the fake upstream answering {latency}, "
        f"max_concurrency {args.concurrency}, one PostgreSQL database per run; the fastest "
        f"of {len(next(iter(runs.values())))} run(s) of each count: "
        + "; ".join(
            f"{count}: " + ", ".join(f"{r.rate:,.0f}" for r in rs) for count, rs in runs.items()
        )
        + " req/s"
    )
    return out


if __name__ == "__main__":
    main(__doc__, add_args, run)
