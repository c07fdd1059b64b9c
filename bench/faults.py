"""Backend faults: run batches against a fake upstream that misbehaves, and print what it cost.

    .venv/bin/python bench/faults.py                 # 1,000 lines a case, a 60 s outage
    .venv/bin/python bench/faults.py --quick         # the test suite's version (2 s outage)
    .venv/bin/python bench/faults.py --only storm-429 --json

Each case starts its own fake upstream (``lowtide.testing.upstream``) and ``lowtide serve``,
runs one batch, checks it with ``lowtide.testing.invariants.check_batch`` and reads the
upstream's counters. What each case promises:

- retryable faults (5xx, dropped connections, timeouts, bad bodies, 429 storms, an outage):
  every line succeeds once the fault passes, and nothing reaches the backend before the
  ``Retry-After`` / ``retry-after-ms`` it announced (``early`` is 0);
- a non-retryable 4xx is sent once and lands in the error file with the backend's code;
- a line that fails every attempt lands in the error file with a clear code after exactly
  ``engine.max_attempts`` calls;
- a backend that is down, or slow, does not hold up a batch of another model on another
  backend.

Columns: calls (requests the upstream saw), calls per line (mean / most for one line),
success (lines that should succeed and did), early (requests sent while a Retry-After was in
force), lost / duplicated / double-billed lines. Exit status 0 when every case keeps its
promise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI

from lowtide.testing.harness import Lowtide, Upstream, ending_children
from lowtide.testing.invariants import Report, check_batch, parse_jsonl

KEY = "sk-faults-000000001"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: marker in a line's content -> (the error code it must end with, calls it must take)
MARKERS = {
    "FAIL400": ("context_length_exceeded", "once"),
    "DROPCONN": ("upstream_unavailable", "max_attempts"),
    "HANGFOREVER": ("upstream_timeout", "max_attempts"),
}


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    lines: int
    upstream: dict[str, Any] = field(default_factory=dict)  # fake upstream config at start
    trigger: dict[str, Any] = field(default_factory=dict)  # applied once dispatch has begun
    engine: dict[str, Any] = field(default_factory=dict)  # [engine] settings
    timeout: float = 30.0  # the backend's timeout
    concurrency: int = 16
    markers: dict[str, int] = field(default_factory=dict)  # marker -> every n-th line


@dataclass
class Result:
    name: str
    what: str
    lines: int
    completed: int = 0
    failed: int = 0
    calls: int = 0
    most_calls: int = 0
    should_succeed: int = 0
    succeeded: int = 0
    early: int = 0
    early_same_line: int = 0  # re-sent before the Retry-After its own 429 announced
    early_max_ms: float = 0.0  # how far ahead of the deadline the earliest one came
    error_codes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    double_billed: int = 0
    settings: str = ""
    #: every promise missed, in words
    problems: list[str] = field(default_factory=list)
    #: of them, the invariants of docs/reliability.md (each line once, billed once): never excused
    invariant_problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


def cases(quick: bool) -> list[Case]:
    n = 200 if quick else 1_000
    outage = 3.0 if quick else 60.0
    storm = 1.0 if quick else 10.0
    long_storm = 5.0 if quick else 10.0
    hang = 0.5 if quick else 2.0
    # Backoff sized so that the retries of a line outlast the fault; the *-defaults cases show
    # what the defaults (5 attempts, 0.5 s doubling to 30 s) do (see docs/reliability.md).
    patient = {"max_attempts": 30, "retry_base_delay": 0.05, "retry_max_delay": 0.5}
    if not quick:
        patient = {"max_attempts": 30, "retry_base_delay": 0.5, "retry_max_delay": 10.0}
    steady = {"max_attempts": 10, "retry_base_delay": 0.05, "retry_max_delay": 1.0}
    return [
        Case("http-5xx", "30% of answers 500/502/503", n, {"error_rate": 0.3}, engine=steady),
        Case("dropped", "20% of connections reset", n, {"drop_rate": 0.2}, engine=steady),
        Case(
            "timeouts",
            f"5% of requests never answered (backend timeout {hang:g} s)",
            n,
            {"hang_rate": 0.05},
            engine=steady,
            timeout=hang,
        ),
        Case(
            "bad-bodies",
            "20% of 200s truncated or HTML",
            n,
            {"garbage_rate": 0.2},
            engine=steady,
        ),
        Case(
            "storm-429",
            f"every request 429 for {storm:g} s (Retry-After, retry-after-ms 0.3 s), 5% after",
            n,
            {"rate_429": 0.05, "retry_after": 0.3},
            trigger={"storm_seconds": storm},
            engine=patient,
        ),
        Case(
            "storm-429-defaults",
            f"the same {long_storm:g} s storm, engine settings left at their defaults",
            n,
            {"rate_429": 0.05, "retry_after": 0.3},
            trigger={"storm_seconds": long_storm},
        ),
        Case(
            "outage",
            f"backend down (connections refused) for {outage:g} s, then back",
            n,
            trigger={"down_seconds": outage},
            engine=patient,
        ),
        Case(
            "outage-defaults",
            f"the same {outage:g} s outage, engine settings left at their defaults",
            n,
            trigger={"down_seconds": outage},
        ),
        Case(
            "client-4xx",
            "every 20th line answered 400 (not retryable)",
            n,
            markers={"FAIL400": 20},
            engine=steady,
        ),
        Case(
            "exhausted",
            "every 25th line dropped, every 40th never answered: all attempts fail",
            n // 2,
            markers={"DROPCONN": 25, "HANGFOREVER": 40},
            # The grace is short: once only the failing lines are left, the backend looks down.
            engine={
                "max_attempts": 4,
                "retry_base_delay": 0.05,
                "retry_max_delay": 0.2,
                "outage_grace": 0,
            },
            timeout=0.5,
        ),
    ]


# ------------------------------------------------------------------------ one case


def config(backends: list[tuple[str, Upstream, str, int, float]], engine: dict[str, Any]) -> str:
    parts = [f'[[api_keys]]\nkey = "{KEY}"\naccount = "faults"\n']
    for name, up, model, concurrency, timeout in backends:
        parts.append(
            f'[[backends]]\nname = "{name}"\nbase_url = "{up.base_url}"\nmodels = ["{model}"]\n'
            f"max_concurrency = {concurrency}\ntimeout = {timeout}\n"
        )
        parts.append(f'[models."{model}"]\ninput_price = 0.8\noutput_price = 2.0\n')
    parts.append("[engine]\n" + "".join(f"{k} = {v}\n" for k, v in engine.items()))
    return "\n".join(parts)


def input_file(prefix: str, model: str, n: int, markers: dict[str, int]) -> bytes:
    out = []
    for i in range(n):
        content = f"{prefix} {i}"
        for marker, every in markers.items():
            if i % every == every - 1:
                content += f" {marker}"
                break
        line = {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}]},
        }
        out.append(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
    return b"".join(out)


def submit(c: OpenAI, data: bytes) -> str:
    f = c.files.create(file=("input.jsonl", data), purpose="batch")
    return c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def wait_until(
    c: OpenAI, batch_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 900.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id).model_dump()
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} stuck in {batch['status']}")
        time.sleep(0.05)


def terminal(batch: dict[str, Any]) -> bool:
    return batch["status"] in TERMINAL


def judge(
    c: OpenAI, server: Lowtide, batch: dict[str, Any], data: bytes
) -> tuple[Report, list[dict[str, Any]]]:
    out = c.files.content(batch["output_file_id"]).content if batch["output_file_id"] else b""
    err = c.files.content(batch["error_file_id"]).content if batch["error_file_id"] else b""
    db = server.workdir / "data" / "lowtide.db"
    return check_batch(data, out, err, batch, db), parse_jsonl(err)[0]


@dataclass(frozen=True)
class Env:
    """Where and how every case runs."""

    root: Path
    quick: bool
    seed: int = 1
    #: A request reaching the upstream this soon after it sent a 429 left lowtide before the
    #: 429 arrived (it was in flight), so it is not early. The fake upstream's default is
    #: 25 ms; on two CPUs shared by the upstream, lowtide and this script, a busy event loop
    #: was seen to take 30 ms (every "early" request of such runs came within 30 ms of a 429,
    #: none later: a server ignoring Retry-After would send all through the pause).
    early_grace_ms: float = 50.0

    def upstream(self, *args: str) -> Upstream:
        return Upstream(
            *("--seed", str(self.seed), "--early-grace-ms", str(self.early_grace_ms)), *args
        )


def run_case(case: Case, env: Env) -> Result:
    started = time.monotonic()
    up = env.upstream("--config-json", orjson.dumps(case.upstream).decode())
    workdir = env.root / case.name
    workdir.mkdir(parents=True)
    backends = [("fake", up, "fake-model", case.concurrency, case.timeout)]
    server = Lowtide(workdir, config(backends, case.engine))
    try:
        server.start()
        c = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=60)
        data = input_file(case.name, "fake-model", case.lines, case.markers)
        batch_id = submit(c, data)
        if case.trigger:
            _wait_for_dispatch(up)
            up.configure(**case.trigger)
        batch = wait_until(c, batch_id, terminal)
        report, errors = judge(c, server, batch, data)
        stats = up.stats(per_key=True)
    finally:
        server.stop()
        up.stop()
    result = _figures(case, report, errors, stats)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _wait_for_dispatch(up: Upstream, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while up.stats()["ok"] == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the batch never reached the backend")
        time.sleep(0.01)


def _figures(
    case: Case, report: Report, errors: list[dict[str, Any]], stats: dict[str, Any]
) -> Result:
    per_key: dict[str, int] = stats["per_key"]
    max_attempts = int(case.engine.get("max_attempts", 5))
    r = Result(case.name, case.what, case.lines, calls=int(stats["requests"]))
    r.most_calls = max(per_key.values(), default=0)
    r.completed, r.failed = report.output_lines, report.error_lines
    r.early = int(stats["early_requests"])
    r.early_same_line = int(stats["early_same_key"])
    r.early_max_ms = float(stats["early_max_ms"])
    r.error_codes = dict(Counter(str((e.get("error") or {}).get("code")) for e in errors))
    r.lost, r.duplicated = len(report.lost), len(report.duplicated)
    r.double_billed = report.double_billed
    r.settings = _settings(case.engine)
    r.invariant_problems = list(report.problems)
    r.problems = list(report.problems)
    marked = _marked_lines(case)
    marked_ids = {case.name + "-" + content.split()[1] for content in marked}
    unmarked_errors = sum(1 for e in errors if e.get("custom_id") not in marked_ids)
    r.should_succeed = case.lines - len(marked)
    r.succeeded = r.should_succeed - unmarked_errors - len(report.lost)
    r.problems += _check_markers(case, marked, errors, per_key, max_attempts)
    if r.succeeded != r.should_succeed:
        r.problems.append(f"{r.should_succeed - r.succeeded} lines that should succeed did not")
    r.problems += _early_problems(r)
    return r


def _settings(engine: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in engine.items()) or "the defaults"


def _early_problems(r: Result) -> list[str]:
    problems = []
    if r.early:
        problems.append(
            f"{r.early} requests reached the backend before its Retry-After deadline "
            f"(the earliest {r.early_max_ms:.0f} ms before)"
        )
    if r.early_same_line:
        problems.append(f"{r.early_same_line} lines re-sent before their own Retry-After")
    return problems


def _marked_lines(case: Case) -> dict[str, str]:
    """The content of each marked line (the upstream's per-line key) -> its marker."""
    marked = {}
    for i in range(case.lines):
        for marker, every in case.markers.items():
            if i % every == every - 1:
                marked[f"{case.name} {i} {marker}"] = marker
                break
    return marked


def _check_markers(
    case: Case,
    marked: dict[str, str],
    errors: list[dict[str, Any]],
    per_key: dict[str, int],
    max_attempts: int,
) -> list[str]:
    problems = []
    codes = {str(e.get("custom_id")): (e.get("error") or {}).get("code") for e in errors}
    for content, marker in marked.items():
        code, calls = MARKERS[marker]
        custom_id = case.name + "-" + content.split()[1]
        if codes.get(custom_id) != code:
            problems.append(f"{custom_id} ended {codes.get(custom_id)!r}, expected {code!r}")
        want = 1 if calls == "once" else max_attempts
        if per_key.get(content, 0) != want:
            problems.append(f"{custom_id} was sent {per_key.get(content, 0)} times, not {want}")
    return problems[:10]


# ------------------------------------------------------------------------ two backends


def isolation(name: str, env: Env) -> Result:
    """Model ``a`` on a backend that is down (or slow), model ``b`` on a healthy one."""
    started = time.monotonic()
    slow, quick = name == "slow-isolation", env.quick
    lines_a = (4 if quick else 20) if slow else (100 if quick else 500)
    lines_b = 100 if quick else 1_000
    # Long enough for model b's batch to run start to finish meanwhile, even on a busy machine.
    outage, latency = (3.0, 2.0) if quick else (60.0, 5.0)
    what = (
        f"model a's backend answers in {latency:g} s, 2 at a time; model b's is healthy"
        if slow
        else f"model a's backend down for {outage:g} s; model b's is healthy"
    )
    up_a = env.upstream("--latency", str(latency if slow else 0.0))
    up_b = env.upstream("--latency", "0.005")
    workdir = env.root / name
    workdir.mkdir(parents=True)
    engine = {"max_attempts": 30, "retry_base_delay": 0.05, "retry_max_delay": 0.5}
    if not quick:
        engine = {"max_attempts": 30, "retry_base_delay": 0.5, "retry_max_delay": 10.0}
    backends = [
        ("a", up_a, "model-a", 2 if slow else 16, 30.0),
        ("b", up_b, "model-b", 16, 30.0),
    ]
    server = Lowtide(workdir, config(backends, engine))
    result = Result(name, what, lines_a + lines_b)
    try:
        server.start()
        if not slow:
            up_a.configure(down_seconds=outage)
        c = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=3, timeout=60)
        data_a = input_file(name + "-a", "model-a", lines_a, {})
        data_b = input_file(name + "-b", "model-b", lines_b, {})
        # Model a's batch first: it has the earlier deadline, so the dispatcher serves it first.
        id_a, id_b = submit(c, data_a), submit(c, data_b)
        batch_b = wait_until(c, id_b, terminal)
        a_when_b_done = c.batches.retrieve(id_a).status
        a_stats = up_a.stats()
        batch_a = wait_until(c, id_a, terminal)
        report_a, errors_a = judge(c, server, batch_a, data_a)
        report_b, errors_b = judge(c, server, batch_b, data_b)
        stats = [up_a.stats(per_key=True), up_b.stats(per_key=True)]
    finally:
        server.stop()
        up_a.stop()
        up_b.stop()
    held_up = a_when_b_done != "in_progress" if slow else not a_stats["down_active"]
    if held_up:
        result.problems.append(
            f"model b's batch finished only when model a's was {a_when_b_done}"
            if slow
            else "model b's batch finished only after model a's backend came back"
        )
    _merge(result, [report_a, report_b], [*errors_a, *errors_b], stats)
    result.settings = _settings(engine)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _merge(
    result: Result, reports: list[Report], errors: list[dict[str, Any]], stats: list[dict[str, Any]]
) -> None:
    result.calls = sum(int(s["requests"]) for s in stats)
    result.most_calls = max(max(s["per_key"].values(), default=0) for s in stats)
    result.early = sum(int(s["early_requests"]) for s in stats)
    result.early_same_line = sum(int(s["early_same_key"]) for s in stats)
    result.early_max_ms = max(float(s["early_max_ms"]) for s in stats)
    result.completed = sum(r.output_lines for r in reports)
    result.failed = sum(r.error_lines for r in reports)
    result.should_succeed, result.succeeded = result.lines, result.completed
    result.error_codes = dict(Counter(str((e.get("error") or {}).get("code")) for e in errors))
    result.lost = sum(len(r.lost) for r in reports)
    result.duplicated = sum(len(r.duplicated) for r in reports)
    result.double_billed = sum(r.double_billed for r in reports)
    result.invariant_problems = [p for r in reports for p in r.problems]
    result.problems += result.invariant_problems
    if result.succeeded != result.should_succeed:
        result.problems.append(f"{result.lines - result.succeeded} lines did not succeed")
    result.problems += _early_problems(result)


# ------------------------------------------------------------------------ command line


CASE_NAMES = [c.name for c in cases(True)] + ["down-isolation", "slow-isolation"]


def run(name: str, env: Env) -> Result:
    try:
        if name.endswith("-isolation"):
            return isolation(name, env)
        (case,) = [c for c in cases(env.quick) if c.name == name]
        return run_case(case, env)
    except Exception as exc:  # one broken case must not hide the figures of the others
        problem = [f"{exc!r}"[:2000]]
        return Result(
            name, "(did not run to the end)", 0, problems=problem, invariant_problems=problem
        )


def table(results: list[Result]) -> str:
    rows = [
        "| case | fault | lines | ok / error lines | calls | calls per line (mean / most) "
        "| success | early (same line) | lost | dup | double-billed | result |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        codes = ", ".join(f"{k} {n}" for k, n in sorted(r.error_codes.items()))
        success = 100.0 * r.succeeded / r.should_succeed if r.should_succeed else 100.0
        rows.append(
            f"| {r.name} | {r.what} | {r.lines:,} | {r.completed} / {r.failed}"
            f"{f' ({codes})' if codes else ''} | {r.calls:,} "
            f"| {r.calls / max(1, r.lines):.2f} / {r.most_calls} | {success:.1f}% "
            f"| {r.early} ({r.early_same_line}) "
            f"| {r.lost} | {r.duplicated} | {r.double_billed} "
            f"| {'ok' if r.ok else 'FAILED: ' + '; '.join(r.problems[:3])} |"
        )
    settings = [f"- {r.name}: {r.settings} ({r.seconds} s)" for r in results]
    return "\n".join([*rows, "", "Engine settings per case:", *settings])


def run_cases(env: Env, names: list[str], jobs: int) -> list[Result]:
    """Run the cases, ``jobs`` at once; on the way out, however it goes, no process is left."""
    # Exits in reverse order: ending_children ends every case's processes first, so that a
    # case still running fails at once (its server and upstream gone) and the pool, which
    # waits for its threads, is not held up by it.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, ending_children():
        # Each case has its own processes, ports and directory, so cases can overlap.
        futures = [pool.submit(run, name, env) for name in names]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()  # the cases not started yet never start
            raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small batches, short faults")
    p.add_argument("--only", action="append", choices=CASE_NAMES, help="run only this case")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (figures: 1)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--early-grace-ms",
        type=float,
        default=50.0,
        help="a request this soon after a 429 was in flight, not early (default: 50)",
    )
    p.add_argument("--workdir", type=Path, help="keep the servers' files here (default: a tmp)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="lowtide-faults-"))
    env = Env(root, args.quick, args.seed, args.early_grace_ms)
    try:
        results = run_cases(env, args.only or CASE_NAMES, args.jobs)
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        return 130
    if args.json:
        out = [{**r.__dict__, "ok": r.ok} for r in results]
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
