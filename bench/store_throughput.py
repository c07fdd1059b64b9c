"""How many requests per second can a store claim and commit? The engine's hot path, without
HTTP: ``finish_validation`` of N request rows, then claim ``--group`` requests and commit
their outcomes as one group, until none are left.

    .venv/bin/python bench/store_throughput.py                     # both stores, 50,000 rows
    .venv/bin/python bench/store_throughput.py --store postgres --workers 4
    .venv/bin/python bench/store_throughput.py --store postgres --per-row   # the slow way
    .venv/bin/python bench/store_throughput.py --tiny                       # does it still run?

PostgreSQL runs in a fresh database on ``$LOWTIDE_TEST_PG_URL``'s server (default
``postgresql://postgres@127.0.0.1:5432/test``), dropped afterwards. ``--per-row`` commits each
outcome with its own UPDATE (in one transaction per group) instead of the store's single
``UPDATE ... FROM unnest(...)``, to show what that choice is worth. ``--workers`` claim loops
share one store; on PostgreSQL ``--processes`` runs that many stores (connection pools) at once.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowtide.domain import lines
from lowtide.domain.records import BatchRecord, Pricing
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import SUCCEEDED, Claim, Outcome
from lowtide.store import Store, open_store
from lowtide.store.postgres import PostgresStore
from lowtide.testing import postgres as pg

LEASE = 300.0
BODY = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":' + (
    b'{"role":"assistant","content":"' + b"x" * 160 + b'"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":20,"completion_tokens":40,"total_tokens":60}}'
)


@dataclass
class Timings:
    claim_s: float = 0.0
    record_s: float = 0.0
    rows: int = 0
    groups: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class PerRowPostgresStore(PostgresStore):
    """The alternative to the unnest statement: one fenced UPDATE per outcome."""

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        async def record(conn: Any) -> list[str]:
            applied: dict[str, int] = {}
            for o in outcomes:
                status = await conn.execute(
                    "UPDATE requests SET state = 2, lease_owner = NULL, attempts = $4,"
                    " status_code = $5, request_id = $6, result = $7"
                    " WHERE batch_id = $1 AND line = $2 AND lease_epoch = $3 AND state = 1",
                    o.batch_id,
                    o.line,
                    o.epoch,
                    o.attempts,
                    o.status_code,
                    o.request_id,
                    lines.outcome_line(o),
                )
                if status.endswith(" 1"):
                    applied[o.batch_id] = applied.get(o.batch_id, 0) + 1
            finished = []
            for batch_id, n in applied.items():
                row = await conn.fetchrow(
                    "UPDATE batches SET completed = completed + $2 WHERE id = $1"
                    " RETURNING completed + failed >= total",
                    batch_id,
                    n,
                )
                if row[0]:
                    finished.append(batch_id)
            return finished

        return await self._run(record)


def outcome(claim: Claim) -> Outcome:
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        SUCCEEDED,
        status_code=200,
        request_id=f"req-{claim.line}",
        body=BODY,
        input_tokens=20,
        output_tokens=40,
        attempts=claim.attempts + 1,
        custom_id=claim.custom_id,
    )


async def prepare(store: Store, batch_id: str, n: int) -> float:
    """Create and validate a batch of ``n`` rows; returns the seconds finish_validation took."""
    now = int(time.time())
    await store.create_batch(
        BatchRecord(
            batch_id, "bench", "/v1/chat/completions", "file-batch-x", "24h", now, now + 86400
        )
    )
    claimed = await store.claim_validation("bench", time.time(), LEASE)
    assert claimed is not None and claimed.id == batch_id
    lines = [RequestLine(i, f"custom-{i}", (i - 1) * 300, 299) for i in range(1, n + 1)]
    started = time.perf_counter()
    assert await store.finish_validation(batch_id, "bench", lines, "m", Pricing(), now)
    return time.perf_counter() - started


async def drain(store: Store, batch_id: str, owner: str, group: int, t: Timings) -> None:
    while True:
        started = time.perf_counter()
        claims = await store.claim_requests(batch_id, owner, group, time.time(), LEASE)
        t.claim_s += time.perf_counter() - started
        if not claims:
            return
        started = time.perf_counter()
        await store.record_outcomes([outcome(c) for c in claims], int(time.time()))
        t.record_s += time.perf_counter() - started
        t.rows += len(claims)
        t.groups += 1


async def run_store(stores: list[Store], args: argparse.Namespace) -> Timings:
    t = Timings()
    t.extra["insert_s"] = await prepare(stores[0], "batch_bench", args.requests)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            drain(s, "batch_bench", f"w{p}-{w}", args.group, t)
            for p, s in enumerate(stores)
            for w in range(args.workers)
        )
    )
    t.extra["wall_s"] = time.perf_counter() - started
    batch = await stores[0].get_batch(None, "batch_bench")
    assert batch is not None and batch.completed == args.requests, batch
    return t


async def bench(kind: str, args: argparse.Namespace) -> Timings:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(f"sqlite:///{Path(tmp) / 'bench.db'}")
            await store.open()
            try:
                return await run_store([store], args)
            finally:
                await store.close()
    name = await pg.create_database()
    stores: list[Store] = []
    try:
        cls = PerRowPostgresStore if args.per_row else PostgresStore
        stores = [cls(pg.url_of(name)) for _ in range(args.processes)]
        for s in stores:
            await s.open()
        return await run_store(stores, args)
    finally:
        for s in stores:
            await s.close()
        await pg.drop_database(name)


def report(kind: str, args: argparse.Namespace, t: Timings) -> None:
    wall = t.extra["wall_s"]
    label = kind + (" (per-row UPDATEs)" if kind == "postgres" and args.per_row else "")
    loops = args.workers * (args.processes if kind == "postgres" else 1)
    print(
        f"{label:<30} {t.rows:>7} rows, groups of {args.group}, {loops} claim loop(s):"
        f" {t.rows / wall:>9,.0f} rows/s claim+record"
        f" | insert {args.requests / t.extra['insert_s']:>9,.0f} rows/s"
        f" | per group: claim {1000 * t.claim_s / t.groups:.2f} ms,"
        f" record {1000 * t.record_s / t.groups:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--group", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="claim loops per store")
    parser.add_argument("--processes", type=int, default=1, help="PostgreSQL stores (pools)")
    parser.add_argument("--per-row", action="store_true", help="PostgreSQL: per-row UPDATEs")
    parser.add_argument("--tiny", action="store_true", help="a quick run that only checks")
    args = parser.parse_args()
    if args.tiny:
        args.requests = min(args.requests, 1000)
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    for kind in kinds:
        report(kind, args, asyncio.run(bench(kind, args)))


if __name__ == "__main__":
    main()
