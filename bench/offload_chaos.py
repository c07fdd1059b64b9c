"""Offload chaos: SIGKILL ``lowtide serve`` while it offloads a batch to a hosted Batch API, at
each step that touches the upstream (a chunk's upload, its upstream batch's create, the polls,
the download of its results), restart it, and check that nothing was lost, done twice or
billed twice, and that no upstream batch was created twice for one chunk.

    .venv/bin/python bench/offload_chaos.py                         # 10,000 lines, 40 kills
    .venv/bin/python bench/offload_chaos.py --lines 300 --kills 4   # the test suite's version

The upstream is the fake hosted Batch API (``lowtide.testing.batch_api``) as a process, with
no fault of its own: every repeat comes from a crash. It does not honour ``Idempotency-Key``
here (``--idempotency`` turns it on): what keeps a chunk from being created twice is then only
lowtide's record of each create and its search of the upstream's batches after a crash. Each
of its uploads, creates and downloads is held for ``--hold`` seconds after it took effect
(before its answer), so that a kill lands where the answer of a call that did happen is lost.

A worker whose lease runs out while its upload is on the way (a stall, or a kill just after
the upload reached the upstream but before the fleet's next worker looked) can leave a second
copy of a chunk's input file upstream: it is never used for a batch, and the chunk deletes
every copy of its file when it is done. ``files uploaded twice`` counts them, ``files left
upstream`` what is still there at the end (0 is the promise).

Kills are aimed in turn at: an upload in progress, a create in progress, a chunk being polled
(its upstream batch running) and a download in progress, each at a seeded random moment of
that step. An aim with nothing to hit at that moment is skipped.

``--fleet`` runs the same on PostgreSQL (a throwaway database on the machine's server): one
``lowtide serve --api-only`` and two ``lowtide worker`` processes, both workers killed at each
aim and started again. Workers of a fleet never let go of a dead one's leases at start-up: the
chunks are taken over once their lease (``engine.lease_seconds``, 3 s here) has run out.

The batch is judged at the end by ``lowtide.testing.invariants.check_batch``, and the fake's
counters say how many times each chunk's batch was created and each input file uploaded, and
how many times each line ran. Exit status 0 when every promise holds.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from common import scratch
from openai import OpenAI

from lowtide.testing import postgres as pg
from lowtide.testing.batch_api import BatchApiConfig, BatchApiProcess
from lowtide.testing.harness import Lowtide, Worker, ending_children
from lowtide.testing.invariants import Report, check_batch

KEY = "sk-offload-chaos-001"
MODEL = "chaos-model"
AIMS = ("upload", "create", "poll", "download")
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class Kill:
    aim: str
    state: str  # the chunks' states in the database at the kill, e.g. "running 12, done 3"
    uptime_s: float


@dataclass
class Outcome:
    lines: int
    chunks: int = 0
    status: str = ""
    kills: list[Kill] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    report: Report | None = None
    upstream: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def config(api: BatchApiProcess, chunk: int, server: str = "", lease: float = 30) -> str:
    return f"""{server}
[[api_keys]]
key = "{KEY}"
account = "chaos"

[[backends]]
name = "hosted"
kind = "batch"
dialect = "openai"
base_url = "{api.base_url}"
api_key = "EMPTY"
models = ["{MODEL}"]
max_lines_per_chunk = {chunk}
poll_interval = 0.2
deadline_margin = 60
timeout = 30

[models."{MODEL}"]
input_price = 0.8
output_price = 2.0

[engine]
lease_seconds = {lease}

[account_defaults]
retrieve_per_minute = 1000000
"""


def input_file(n: int) -> bytes:
    # Each line's content is unique: the fake counts runs per content.
    lines = (
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"chaos {i}"}]},
        }
        for i in range(n)
    )
    return b"".join(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE) for line in lines)


def chunk_states(server: Lowtide, database: str | None = None) -> Counter[str]:
    if database is not None:
        return pg.run_sync(_pg_chunk_states(database))
    path = server.workdir / "data" / "lowtide.db"
    if not path.exists():
        return Counter()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        try:
            rows = conn.execute("SELECT state, COUNT(*) FROM offload_chunks GROUP BY state")
            return Counter({state: n for state, n in rows})
        except sqlite3.OperationalError:
            return Counter()  # not made yet


async def _pg_chunk_states(database: str) -> Counter[str]:
    import asyncpg

    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch("SELECT state, COUNT(*) FROM offload_chunks GROUP BY state")
    finally:
        await conn.close()
    return Counter({row[0]: int(row[1]) for row in rows})


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


class Chaos:
    def __init__(self, opts: argparse.Namespace, workdir: Path) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        fake = BatchApiConfig(
            run_seconds=opts.run_seconds,
            hold_uploads=opts.hold,
            hold_creates=opts.hold,
            hold_contents=opts.hold,
            honour_idempotency=opts.idempotency,
        )
        self.api = BatchApiProcess(fake, log=workdir / "batch_api.log")
        (workdir / "lowtide").mkdir()
        self.database: str | None = None
        self.workers: list[Worker] = []
        if opts.fleet:
            self.database = pg.url_of(pg.run_sync(pg.create_database()))
            shared = (
                f'[server]\ndatabase_url = "{self.database}"\n'
                f'storage_url = "file://{workdir / "files"}"\n'
            )
            toml = config(self.api, opts.chunk, shared, lease=3)
            self.server = Lowtide(workdir / "lowtide", toml, extra_args=["--api-only"])
            self.workers = [
                Worker(workdir / f"worker{i}", self.server.config_path) for i in range(2)
            ]
        else:
            self.server = Lowtide(workdir / "lowtide", config(self.api, opts.chunk))
        self.started = 0.0

    def run(self) -> Outcome:
        opts = self.opts
        outcome = Outcome(opts.lines)
        began = time.monotonic()
        data = input_file(opts.lines)
        self.server.start(timeout=60)
        self._start()
        c = OpenAI(base_url=self.server.base_url, api_key=KEY, max_retries=5, timeout=60)
        upload = c.files.create(file=("input.jsonl", data), purpose="batch")
        batch_id = c.batches.create(
            input_file_id=upload.id,
            endpoint="/v1/chat/completions",
            completion_window="48h",  # type: ignore[arg-type]
        ).id
        turn = 0
        while len(outcome.kills) < opts.kills and not self._ended(c, batch_id):
            aim = AIMS[turn % len(AIMS)]
            turn += 1
            if self._aim(aim):
                time.sleep(self.rng.uniform(0.0, opts.hold * 0.8))
                outcome.kills.append(self._kill(aim))
                self._start()
            else:
                outcome.skipped[aim] += 1  # nothing of that step under way now: the next aim
        final = self._wait(c, batch_id)
        # The last chunks clean up (delete their upstream files) just after the batch ends.
        wait_until(lambda: set(chunk_states(self.server, self.database)) == {"done"}, 60.0)
        out = c.files.content(final["output_file_id"]).content if final["output_file_id"] else b""
        err = c.files.content(final["error_file_id"]).content if final["error_file_id"] else b""
        outcome.status = final["status"]
        # The database is checked too on SQLite (the checker reads SQLite only).
        db = None if self.opts.fleet else self.server.workdir / "data" / "lowtide.db"
        outcome.report = check_batch(data, out, err, final, db)
        outcome.chunks = sum(chunk_states(self.server, self.database).values())
        outcome.upstream = self.api.stats(per_key=True)
        outcome.seconds = round(time.monotonic() - began, 1)
        return outcome

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.server.stop()
        self.api.stop()
        if self.database is not None:
            pg.run_sync(pg.drop_database(self.database.rsplit("/", 1)[1]))

    def _start(self) -> None:
        """Start the engines: the server (SQLite), or the fleet's workers."""
        if self.workers:
            for worker in self.workers:
                worker.start(timeout=60)
        elif self.server.proc is None or self.server.proc.poll() is not None:
            self.server.start(timeout=60)
        self.started = time.monotonic()

    def _aim(self, aim: str) -> bool:
        """Wait (a few seconds at most) until the step ``aim`` is under way."""
        stats = self.api.stats
        checks: dict[str, Callable[[], bool]] = {
            "upload": lambda: stats()["uploading"] > 0,
            "create": lambda: stats()["creating"] > 0,
            "poll": lambda: chunk_states(self.server, self.database)["running"] > 0,
            "download": lambda: stats()["downloading"] > 0,
        }
        return wait_until(checks[aim], 5.0)

    def _kill(self, aim: str) -> Kill:
        uptime = time.monotonic() - self.started
        for engine in self.workers or [self.server]:
            engine.kill()
        states = chunk_states(self.server, self.database)
        shown = ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
        return Kill(aim, shown, round(uptime, 2))

    def _ended(self, c: OpenAI, batch_id: str) -> bool:
        return c.batches.retrieve(batch_id).status in TERMINAL

    def _wait(self, c: OpenAI, batch_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 900
        while True:
            batch = c.batches.retrieve(batch_id).model_dump()
            if batch["status"] in TERMINAL:
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} stuck in {batch['status']}")
            time.sleep(0.2)


def summary(opts: argparse.Namespace, o: Outcome) -> dict[str, Any]:
    report = o.report
    up = o.upstream
    creates = up.get("creates_by_chunk") or {}
    uploads = up.get("uploads_by_name") or {}
    runs = up.get("per_key") or {}
    result: dict[str, Any] = {
        "lines": o.lines,
        "status": o.status,
        "kills": len(o.kills),
        "kills_asked": opts.kills,
        "kills_by_aim": dict(Counter(k.aim for k in o.kills)),
        "skipped_aims": dict(o.skipped),
        "chunks": o.chunks,
        "upstream_batches": up.get("batches_created"),
        "chunks_created_twice": sum(1 for n in creates.values() if n > 1),
        "files_uploaded_twice": sum(1 for n in uploads.values() if n > 1),
        "files_left_upstream": up.get("files_stored"),
        "lines_run_twice_upstream": sum(n - 1 for n in runs.values() if n > 1),
        "lost": len(report.lost) if report else None,
        "duplicated": len(report.duplicated) if report else None,
        "double_billed": report.double_billed if report else None,
        "problems": list(report.problems) if report else ["never judged"],
        "create_calls": up.get("creates"),
        "upload_calls": up.get("uploads"),
        "seconds": o.seconds,
        "idempotency": opts.idempotency,
        "fleet": opts.fleet,
        "kill_log": [asdict(k) for k in o.kills],
    }
    result["ok"] = bool(
        o.status == "completed"
        and not result["problems"]
        and result["lost"] == result["duplicated"] == result["double_billed"] == 0
        and result["chunks_created_twice"] == 0
        and result["files_left_upstream"] == 0
        and result["lines_run_twice_upstream"] == 0
        # The batch may end before every kill asked for fits (a fleet restarts slowly): fewer
        # kills test less, and the table says so, but break no promise.
        and result["kills"] > 0
        and result["upstream_batches"] == o.chunks
    )
    return result


def table(r: dict[str, Any]) -> str:
    aims = ", ".join(f"{a} {r['kills_by_aim'].get(a, 0)}" for a in AIMS)
    rows = [
        "| lines | chunks | upstream batches | kills | lost | duplicated | double-billed "
        "| chunks created twice | files uploaded twice | files left upstream "
        "| lines run twice upstream | status |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {r['lines']:,} | {r['chunks']} | {r['upstream_batches']} | {r['kills']} "
        f"| {r['lost']} | {r['duplicated']} | {r['double_billed']} "
        f"| {r['chunks_created_twice']} | {r['files_uploaded_twice']} "
        f"| {r['files_left_upstream']} | {r['lines_run_twice_upstream']} | {r['status']} |",
        "",
        f"Kills by the step they were aimed at: {aims}; aims skipped (nothing of that step "
        f"under way): {sum(r['skipped_aims'].values())}.",
        f"Kills asked for: {r['kills_asked']}; made before the batch ended: {r['kills']}.",
        f"Upstream calls: {r['upload_calls']} uploads stored, {r['create_calls']} creates "
        f"received, for {r['chunks']} chunks.",
        f"Idempotency-Key honoured upstream: {'yes' if r['idempotency'] else 'no'}; "
        + ("a PostgreSQL fleet of two workers." if r["fleet"] else "SQLite, one server."),
        "Result: " + ("OK, every promise holds." if r["ok"] else f"FAILED: {r['problems']}"),
    ]
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=10_000)
    p.add_argument("--chunk", type=int, default=100, help="max_lines_per_chunk")
    p.add_argument("--kills", type=int, default=40)
    p.add_argument("--hold", type=float, default=0.4, help="seconds each upstream step is held")
    p.add_argument("--run-seconds", type=float, default=1.0, help="an upstream batch's run")
    p.add_argument("--idempotency", action="store_true", help="the upstream honours the key")
    p.add_argument("--fleet", action="store_true", help="PostgreSQL, an API and two workers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    try:
        # The server and the fake end with their process groups however the run ends.
        with scratch(opts.workdir) as workdir, ending_children():
            chaos = Chaos(opts, workdir)
            try:
                outcome = chaos.run()
            finally:
                chaos.stop()
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        return 130
    result = summary(opts, outcome)
    if opts.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(result))
        print(f"({result['seconds']} s, seed {opts.seed})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
