"""Chaos: SIGKILL ``lowtide serve`` at seeded random moments while it runs batches, restart it,
and check from the result files and the database that nothing was lost or done twice.

    .venv/bin/python bench/chaos.py                            # 10,000 lines, 50 kills
    .venv/bin/python bench/chaos.py --lines 1000 --kills 5     # the test suite's version

One fake upstream (no faults injected, so every repeated upstream call is a crash repeat) and
three scenarios, each judged by ``lowtide.testing.invariants.check_batch``:

- ``main``: a ``--lines`` batch; the first kill lands during validation, the rest during
  dispatch (so during group commits) at moments spread over the run, and the last
  ``--final-kills`` while the batch is finalising (writing and publishing its files);
- ``cancel``: a smaller batch submitted just before, cancelled, and killed right after;
- ``expiry``: on a second server whose completion window is a few seconds, a batch too long to
  finish, killed around its expiry.

It prints one Markdown table: kills, lines lost, lines duplicated, double-billed lines, repeated
upstream calls (with the most in one restart and the in-flight window ``max_concurrency +
commit_batch`` they must stay under), and the time from a restart (process start) to the first
request the upstream sees. Exit status 0 when every invariant holds.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI

from lowtide.testing.harness import Lowtide, Upstream, ending_children
from lowtide.testing.invariants import Report, check_batch

KEY = "sk-chaos-0000000001"
MODEL = "chaos-model"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
RESUME_TARGET_S = 5.0


@dataclass
class Kill:
    scenario: str
    aim: str  # validation, dispatch, cancel, finalisation, after the end, expiry
    status: str  # the batch's status in the database after the kill
    uptime_s: float  # from ready to SIGKILL
    in_flight: int  # request rows still leased when the process died
    resume_s: float | None = None  # process start -> first new upstream request, if seen
    repeats: int = 0  # upstream calls, after this restart, for lines sent before it


@dataclass
class Scenario:
    name: str
    lines: int
    status: str = ""
    expected: str = ""
    kills: list[Kill] = field(default_factory=list)
    report: Report | None = None
    repeats: int = 0  # sum over this scenario's lines of (upstream calls - 1)
    final_resume: float | None = None  # the restart after the last kill

    def resumes(self) -> list[float]:
        values = [k.resume_s for k in self.kills if k.resume_s is not None]
        return values + ([self.final_resume] if self.final_resume is not None else [])


@dataclass
class Options:
    lines: int
    kills: int
    final_kills: int
    cancel_lines: int
    expiry_lines: int
    expiry_kills: int
    expiry_window: int
    concurrency: int
    commit_batch: int
    latency: float
    seed: int
    workdir: Path | None
    json: bool


# ------------------------------------------------------------------------ processes and batches


def config(upstream: Upstream, concurrency: int, commit_batch: int, extra: str = "") -> str:
    return f"""
[[api_keys]]
key = "{KEY}"
account = "chaos"

[[backends]]
name = "fake"
base_url = "{upstream.base_url}"
models = ["{MODEL}"]
max_concurrency = {concurrency}
timeout = 30

[models."{MODEL}"]
input_price = 0.8
output_price = 2.0

[engine]
commit_batch = {commit_batch}
lease_seconds = 30
{extra}
"""


def input_file(prefix: str, n: int) -> bytes:
    # Each line's content is unique: the fake upstream counts calls per content (its "key").
    lines = (
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{prefix} {i}"}]},
        }
        for i in range(n)
    )
    return b"".join(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE) for line in lines)


def submit(c: OpenAI, data: bytes) -> str:
    f = c.files.create(file=("input.jsonl", data), purpose="batch")
    batch = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


def wait_terminal(c: OpenAI, batch_id: str, timeout: float = 900.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id).model_dump()
        if batch["status"] in TERMINAL:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} stuck in {batch['status']}")
        time.sleep(0.2)


def judge(c: OpenAI, server: Lowtide, batch_id: str, data: bytes) -> tuple[str, Report]:
    batch = wait_terminal(c, batch_id)
    out = c.files.content(batch["output_file_id"]).content if batch["output_file_id"] else b""
    err = c.files.content(batch["error_file_id"]).content if batch["error_file_id"] else b""
    return batch["status"], check_batch(data, out, err, batch, db_path(server))


def db_path(server: Lowtide) -> Path:
    return server.workdir / "data" / "lowtide.db"


def db_state(server: Lowtide, batch_id: str) -> tuple[str, int]:
    """(status, lines not yet done) of a batch, read from the database."""
    with _db(server) as conn:
        row = conn.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
        (undone,) = conn.execute(
            "SELECT COUNT(*) FROM requests WHERE batch_id = ? AND state < 2", (batch_id,)
        ).fetchone()
    return (row[0] if row else "missing"), int(undone)


def db_leased(server: Lowtide) -> int:
    """Request rows leased (claimed, result not committed): what a crash puts in doubt."""
    with _db(server) as conn:
        (leased,) = conn.execute("SELECT COUNT(*) FROM requests WHERE state = 1").fetchone()
    return int(leased)


def _db(server: Lowtide) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(f"file:{db_path(server)}?mode=ro", uri=True))


class FirstDispatch:
    """Watches the upstream's request counter from a restart to the first new request."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.base = upstream.stats()["requests"]
        self.started = time.monotonic()
        self.seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                requests = self.upstream.stats()["requests"]
            except OSError:
                return  # the upstream is gone: the run is over
            if self._stop.is_set():
                return  # seen after the kill: not this life's resume
            if requests > self.base:
                # When the answer came back: an upper bound, by one poll, of the moment.
                self.seen = time.monotonic() - self.started
                return
            time.sleep(0.005)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seen


class Run:
    """One server's lives: restarts, kills, and the upstream's per-line counts between them."""

    def __init__(self, server: Lowtide, upstream: Upstream) -> None:
        self.server, self.upstream = server, upstream
        self.watch: FirstDispatch | None = None
        self.ready_at = 0.0
        self.counts = Counter[str](upstream.stats(per_key=True)["per_key"])

    def start(self) -> None:
        self.stop_watching()
        self.watch = FirstDispatch(self.upstream)
        self.server.start()
        self.ready_at = time.monotonic()

    def kill(self, scenario: Scenario, aim: str, batch_id: str) -> Kill:
        uptime = time.monotonic() - self.ready_at
        self.server.kill()
        resume = self.stop_watching()
        status, _ = db_state(self.server, batch_id)
        counts = Counter[str](self.upstream.stats(per_key=True)["per_key"])
        # Calls in this life for lines already sent in an earlier one: crash repeats.
        repeats = sum(n - self.counts[k] for k, n in counts.items() if self.counts[k] > 0)
        self.counts = counts
        kill = Kill(
            scenario.name, aim, status, round(uptime, 3), db_leased(self.server), resume, repeats
        )
        scenario.kills.append(kill)
        return kill

    def stop_watching(self) -> float | None:
        watch, self.watch = self.watch, None
        return watch.stop() if watch is not None else None

    def last_start(self) -> float | None:
        """Start for good; the time to the first request, if this life sends any soon."""
        self.start()
        assert self.watch is not None
        deadline = time.monotonic() + RESUME_TARGET_S
        while self.watch.seen is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stop_watching()


# ------------------------------------------------------------------------ the scenarios


def main_and_cancel(opts: Options, upstream: Upstream, rng: random.Random) -> list[Scenario]:
    server = Lowtide(_workdir(opts, "main"), config(upstream, opts.concurrency, opts.commit_batch))
    main = Scenario("main", opts.lines, expected="completed")
    cancel = Scenario("cancel", opts.cancel_lines, expected="cancelled")
    run = Run(server, upstream)
    run.start()
    c = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=60)
    cancel_data, data = input_file("cancel", opts.cancel_lines), input_file("chaos", opts.lines)
    # Submitted first, the cancel batch is dispatched first (same deadline, earlier batch).
    cancel_id = submit(c, cancel_data) if opts.cancel_lines else None
    batch_id = submit(c, data)
    time.sleep(rng.uniform(0.0, 0.3))  # the input file is being validated
    run.kill(main, "validation", batch_id).resume_s = None  # nothing to resume in a first life
    try:
        if cancel_id is not None:
            run.start()
            c.batches.cancel(cancel_id)
            time.sleep(rng.uniform(0.0, 0.3))  # in-flight requests finish, files are written
            run.kill(cancel, "cancel", cancel_id)
        _kill_loop(opts, run, main, batch_id, rng)
        main.final_resume = run.last_start()
        main.status, main.report = judge(c, server, batch_id, data)
        if cancel_id is not None:
            cancel.status, cancel.report = judge(c, server, cancel_id, cancel_data)
    finally:
        run.stop_watching()
        server.stop()
    main.repeats = _repeats(upstream, "chaos")
    cancel.repeats = _repeats(upstream, "cancel")
    return [main, cancel] if cancel_id else [main]


def _kill_loop(opts: Options, run: Run, main: Scenario, batch_id: str, rng: random.Random) -> None:
    dispatch_kills = (
        opts.kills - len(main.kills) - opts.final_kills - (1 if opts.cancel_lines else 0)
    )
    rate = Rate()
    while len(main.kills) < opts.kills - (1 if opts.cancel_lines else 0):
        status, undone = db_state(run.server, batch_id)
        run.start()
        done = sum(1 for k in main.kills if k.aim == "dispatch")
        if status in TERMINAL:
            # Kills left once the batch is done: a restart must change nothing any more.
            time.sleep(rng.uniform(0.0, 0.3))
            aim = "after the end"
        elif done < dispatch_kills and undone > 0:
            # Spread the kills left over the lines left, at the rate seen so far.
            share = rate.seconds_for(undone) / (dispatch_kills - done + 1)
            time.sleep(min(5.0, share * rng.uniform(0.5, 1.5)))
            aim = "dispatch"
        else:
            _wait_for(lambda: db_state(run.server, batch_id)[0] != "in_progress", 600.0)
            time.sleep(rng.uniform(0.0, 0.08))  # the files are being written and published
            aim = "finalisation"
        kill = run.kill(main, aim, batch_id)
        rate.add(undone - db_state(run.server, batch_id)[1], kill.uptime_s)


class Rate:
    """Lines finished per second of uptime, to spread the kills over the whole batch."""

    def __init__(self) -> None:
        self.lines, self.seconds = 0, 0.0

    def add(self, lines: int, seconds: float) -> None:
        self.lines, self.seconds = self.lines + max(0, lines), self.seconds + seconds

    def seconds_for(self, lines: int) -> float:
        per_second = self.lines / self.seconds if self.lines and self.seconds else 300.0
        return lines / per_second


def expiry(opts: Options, upstream: Upstream, rng: random.Random) -> Scenario:
    window = f"[testing]\ncompletion_window_seconds = {opts.expiry_window}\n"
    # Two at a time (about 20 lines a second): far too slow to finish within the window.
    server = Lowtide(_workdir(opts, "expiry"), config(upstream, 2, opts.commit_batch, window))
    scenario = Scenario("expiry", opts.expiry_lines, expected="expired")
    run = Run(server, upstream)
    run.start()
    c = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=60)
    data = input_file("expiry", opts.expiry_lines)
    batch_id = submit(c, data)
    try:
        status = "in_progress"
        for n in range(opts.expiry_kills):
            if n:
                run.start()
            # Moments spread over the window and past it, so that some fall on the expiry.
            time.sleep(rng.uniform(0.2, 2.0))
            kill = run.kill(scenario, "expiry", batch_id)
            if n == 0:
                kill.resume_s = None  # the first life had nothing to resume
            status = kill.status
            if status in TERMINAL:
                break
        if status in TERMINAL:
            run.start()  # only to download the files
        else:
            scenario.final_resume = run.last_start()
        scenario.status, scenario.report = judge(c, server, batch_id, data)
    finally:
        run.stop_watching()
        server.stop()
    scenario.repeats = _repeats(upstream, "expiry")
    return scenario


def _workdir(opts: Options, name: str) -> Path:
    root = opts.workdir or Path(tempfile.mkdtemp(prefix="lowtide-chaos-"))
    path = root / name
    path.mkdir(parents=True)
    return path


def _repeats(upstream: Upstream, prefix: str) -> int:
    per_key = upstream.stats(per_key=True)["per_key"]
    return sum(n - 1 for k, n in per_key.items() if k.startswith(prefix + " "))


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the batch did not reach finalisation")
        time.sleep(0.01)


# ------------------------------------------------------------------------ figures


def summary(opts: Options, scenarios: list[Scenario]) -> dict[str, Any]:
    kills = [k for s in scenarios for k in s.kills]
    resumes = [value for s in scenarios for value in s.resumes()]
    window = opts.concurrency + opts.commit_batch
    repeats = sum(s.repeats for s in scenarios)
    reports = [s.report for s in scenarios if s.report is not None]
    result = {
        "kills": len(kills),
        "kills_by_status": dict(Counter(k.status for k in kills)),
        "kills_by_aim": dict(Counter(k.aim for k in kills)),
        "lost": sum(len(r.lost) for r in reports),
        "duplicated": sum(len(r.duplicated) for r in reports),
        "double_billed": sum(r.double_billed for r in reports),
        "repeated_calls": repeats,
        "max_repeats_one_restart": max((k.repeats for k in kills), default=0),
        "max_in_flight_at_kill": max((k.in_flight for k in kills), default=0),
        "in_flight_at_kills": sum(k.in_flight for k in kills),
        "window": window,
        "resume_median_s": round(statistics.median(resumes), 3) if resumes else None,
        "resume_max_s": round(max(resumes), 3) if resumes else None,
        "problems": [p for s in scenarios if s.report for p in s.report.problems],
        "statuses": {s.name: {"got": s.status, "expected": s.expected} for s in scenarios},
        "scenarios": [_scenario_dict(s) for s in scenarios],
    }
    result["ok"] = _ok(result, opts)
    return result


def _scenario_dict(s: Scenario) -> dict[str, Any]:
    report = s.report
    return {
        "name": s.name,
        "lines": s.lines,
        "status": s.status,
        "expected": s.expected,
        "kills": [asdict(k) for k in s.kills],
        "repeats": s.repeats,
        "lost": len(report.lost) if report else None,
        "duplicated": len(report.duplicated) if report else None,
        "double_billed": report.double_billed if report else None,
        "problems": list(report.problems) if report else ["never judged"],
    }


def _ok(r: dict[str, Any], opts: Options) -> bool:
    statuses_ok = all(v["got"] == v["expected"] for v in r["statuses"].values())
    return bool(
        statuses_ok
        and not r["problems"]
        and r["kills"] >= opts.kills
        and r["lost"] == r["duplicated"] == r["double_billed"] == 0
        and r["repeated_calls"] <= r["in_flight_at_kills"]
        and r["max_repeats_one_restart"] <= r["window"]
        and (r["resume_max_s"] or 0.0) <= RESUME_TARGET_S
    )


def table(opts: Options, scenarios: list[Scenario], r: dict[str, Any]) -> str:
    rows = [
        "| scenario | lines | status | kills | lost | duplicated | double-billed "
        "| repeated calls | most in one restart | resume median / max (s) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in scenarios:
        rep = s.report
        resumes = s.resumes()
        rows.append(
            f"| {s.name} | {s.lines:,} | {s.status} (expected {s.expected}) | {len(s.kills)} "
            f"| {len(rep.lost) if rep else '?'} | {len(rep.duplicated) if rep else '?'} "
            f"| {rep.double_billed if rep else '?'} | {s.repeats} "
            f"| {max((k.repeats for k in s.kills), default=0)} | {_resume(resumes)} |"
        )
    rows.append(
        f"| **all** | {sum(s.lines for s in scenarios):,} | | **{r['kills']}** | **{r['lost']}** "
        f"| **{r['duplicated']}** | **{r['double_billed']}** | {r['repeated_calls']} "
        f"| {r['max_repeats_one_restart']} | {r['resume_median_s']} / {r['resume_max_s']} |"
    )
    by_status = ", ".join(f"{k} {n}" for k, n in sorted(r["kills_by_status"].items()))
    by_aim = ", ".join(f"{k} {n}" for k, n in r["kills_by_aim"].items())
    notes = [
        "",
        f"Kills by what they were aimed at: {by_aim}.",
        f"Kills by the batch's status at that moment: {by_status}.",
        f"Repeated calls: {r['repeated_calls'] / max(1, r['kills']):.1f} per kill, at most "
        f"{r['max_repeats_one_restart']} after one restart, against an in-flight window "
        f"(max_concurrency + commit_batch) of {r['window']}; in all {r['repeated_calls']}, "
        f"no more than the {r['in_flight_at_kills']} requests leased at the kills (at most "
        f"{r['max_in_flight_at_kill']} at one; claimed ahead but not yet sent ones included).",
        f"Resume target: <= {RESUME_TARGET_S:g} s from process start to the first dispatch.",
        "Result: " + ("OK, every invariant holds." if r["ok"] else "FAILED: " + _why(r, opts)),
    ]
    return "\n".join(rows + notes)


def _resume(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def _why(r: dict[str, Any], opts: Options) -> str:
    reasons = list(r["problems"])
    for name, v in r["statuses"].items():
        if v["got"] != v["expected"]:
            reasons.append(f"{name} ended {v['got']}, expected {v['expected']}")
    if r["kills"] < opts.kills:
        reasons.append(f"only {r['kills']} kills")
    if r["max_repeats_one_restart"] > r["window"]:
        reasons.append("more repeated calls after one restart than the in-flight window")
    if r["repeated_calls"] > r["in_flight_at_kills"]:
        reasons.append("more repeated calls than requests in flight at the kills")
    if (r["resume_max_s"] or 0.0) > RESUME_TARGET_S:
        reasons.append("a resume took longer than the target")
    return "; ".join(reasons) or "see the JSON"


# ------------------------------------------------------------------------ command line


def run_scenarios(opts: Options) -> list[Scenario]:
    rng = random.Random(opts.seed)
    upstream = Upstream(
        "--seed", str(opts.seed), "--latency", str(opts.latency), "--jitter", str(opts.latency / 2)
    )
    try:
        scenarios = main_and_cancel(opts, upstream, rng)
        if opts.expiry_kills and opts.expiry_lines:
            scenarios.append(expiry(opts, upstream, rng))
    finally:
        upstream.stop()
    return scenarios


def parse(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=10_000, help="lines of the main batch")
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs during the main batch")
    p.add_argument("--final-kills", type=int, default=3, help="of them, during finalisation")
    p.add_argument("--cancel-lines", type=int, default=1_000, help="0: no cancel scenario")
    p.add_argument("--expiry-lines", type=int, default=2_000)
    p.add_argument("--expiry-kills", type=int, default=4, help="0: no expiry scenario")
    p.add_argument("--expiry-window", type=int, default=4, help="seconds")
    p.add_argument("--concurrency", type=int, default=64, help="the backend's max_concurrency")
    p.add_argument("--commit-batch", type=int, default=200, help="engine.commit_batch")
    p.add_argument("--latency", type=float, default=0.1, help="the upstream's mean latency (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="keep the servers' files here (default: a tmp)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    return Options(
        a.lines,
        a.kills,
        a.final_kills,
        a.cancel_lines,
        a.expiry_lines,
        a.expiry_kills,
        a.expiry_window,
        a.concurrency,
        a.commit_batch,
        a.latency,
        a.seed,
        a.workdir,
        a.json,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    started = time.monotonic()
    try:
        # The servers and the upstream end with their process groups however the run ends:
        # done, failed, Ctrl-C or SIGTERM.
        with ending_children():
            scenarios = run_scenarios(opts)
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        return 130
    result = summary(opts, scenarios)
    result["seconds"] = round(time.monotonic() - started, 1)
    if opts.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(opts, scenarios, result))
        print(f"({result['seconds']} s, seed {opts.seed})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
