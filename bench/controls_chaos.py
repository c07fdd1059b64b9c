"""Controls chaos: SIGKILL lowtide at seeded random moments while clients pause, resume, cap
and retry batches, and check that every control took effect exactly once and that nothing was
lost, done twice or billed twice.

    .venv/bin/python bench/controls_chaos.py            # SQLite: one lowtide serve
    .venv/bin/python bench/controls_chaos.py --fleet    # PostgreSQL + S3 (moto), 2 workers

One fake upstream (``lowtide.testing.upstream``) with no random faults: only lines whose text
carries its failure marker are answered 400, so that every repeated call is a crash's. Four
batches are submitted, then the kills begin (every ``--kill-min``..``--kill-max`` seconds: the
server, or in ``--fleet`` both workers and, one time in two, the API):

Half the control calls (``--aimed``) also get a kill of their own, 0 to 30 ms after they
leave: before the call arrives, while it runs, or between its commit and its answer.

- ``source``: a small batch of which every fifth line fails; once it has ended, a client
  retries its failed lines ``--retries`` times (``POST /batches/{id}/retry``, each with its own
  ``Idempotency-Key``, sent again with the same key whenever the call fails because lowtide is
  down) after the fake stops failing them, so the retry batches succeed;
- ``pause``: a client pauses and resumes it ``--toggles`` times at random moments (each call
  sent again until it is answered: both are idempotent), checks before every call that the
  state it was last answered still holds, and finally leaves it resumed: it must complete;
- ``error-cap``: ``max_error_rate = 0.2``; its lines fail from 40 % of the file on, so the cap
  must stop it (``stop_reason`` ``max_error_rate``) about half-way;
- ``cost-cap``: ``max_cost`` at 40 % of what its lines would cost: it must stop on
  ``max_cost``.

A thread polls every batch meanwhile and records each one's statuses and ``cancelling_at``: a
stop that happened twice shows as a status moving back, a second ``cancelling_at`` or a
``stop_reason`` that changes. At the end every batch (retries included) is judged by
``lowtide.testing.invariants.check_batch`` (each line once in its files, billed once; the
SQLite database too), the capped batches' lines never sent must end ``batch_stopped``, exactly
``--retries`` batches must carry ``metadata.retry_of`` of the source (the ones the client was
answered), and the billing is held to the upstream's own log: no line billed more often than
the upstream answered it, and the batches' ``cost`` equal to the price of their output lines'
usage. Exit status 0 when every promise holds.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import boto3
import openai
import orjson
from common import MODEL, config_toml, scratch
from openai import OpenAI
from openai.types import Batch

from lowtide.testing import postgres as pg
from lowtide.testing.harness import (
    HOST,
    Lowtide,
    Upstream,
    Worker,
    ending_children,
    free_port,
    spawn,
)
from lowtide.testing.invariants import Report, check_batch

T = TypeVar("T")
KEY = "sk-controls-chaos"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
ORDER = {"validating": 0, "in_progress": 1, "finalizing": 2, "cancelling": 2}
INPUT_PRICE, OUTPUT_PRICE, DISCOUNT, COMPLETION = 0.8, 2.0, 0.5, 16
FAIL_ALL, FAIL_CAP = "FAIL", "FAIL400"  # the fake's marker before / after the retries
STOPPED = "batch_stopped"
ERROR_RATE = 0.2
S3_KEY = "testing"


# ------------------------------------------------------------------------ input files


def content(prefix: str, i: int, lines: int) -> str:
    """Line ``i``'s text (unique: the fake counts calls by it), with a failure marker on the
    lines that must fail: every fifth of the source, the last 60 % of the error-cap batch.
    Every line of a batch is as long as the others: lowtide sends the longest first, and they
    must go out in file order for the error rate to rise half-way."""
    if prefix == "source":
        return f"{prefix} {i:06d} " + ("FAILR" if i % 5 == 0 else "PASSR")
    if prefix == "error-cap":
        return f"{prefix} {i:06d} " + (FAIL_CAP if i >= lines * 0.4 else "PASS400")
    return f"{prefix} {i:06d}"


def input_file(prefix: str, n: int) -> bytes:
    lines = (
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": content(prefix, i, n)}],
            },
        }
        for i in range(n)
    )
    return b"".join(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE) for line in lines)


def line_cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * INPUT_PRICE + completion_tokens * OUTPUT_PRICE) * DISCOUNT / 1e6


def expected_cost(prefix: str, n: int) -> float:
    """What the fake's answers to every line would cost: its prompt_tokens are chars // 4."""
    return sum(line_cost(max(1, len(content(prefix, i, n)) // 4), COMPLETION) for i in range(n))


# ------------------------------------------------------------------------ processes


class Moto:
    """moto's S3 server on loopback, with one bucket, for the fleet's files."""

    def __init__(self, log: Path) -> None:
        self.endpoint = f"http://{HOST}:{free_port()}"
        port = self.endpoint.rsplit(":", 1)[1]
        with log.open("ab") as out:
            self.proc = spawn(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", port],
                stdout=out,
                stderr=out,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        self.bucket = "lowtide-controls-chaos"
        boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
        ).create_bucket(Bucket=self.bucket)

    def toml(self) -> str:
        return f"""storage_url = "s3://{self.bucket}/chaos"

[s3]
endpoint_url = "{self.endpoint}"
region = "us-east-1"
access_key_id = "{S3_KEY}"
secret_access_key = "{S3_KEY}"
"""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Lives:
    """The lowtide processes, their kills and restarts."""

    def __init__(self, opts: argparse.Namespace, workdir: Path, up: Upstream) -> None:
        self.opts, self.rng = opts, random.Random(opts.seed + 1)
        self.database: str | None = None
        self.moto: Moto | None = None
        self.workers: list[Worker] = []
        for name in ("api", "server"):
            (workdir / name).mkdir()
        models = (
            f'[models."{MODEL}"]\ninput_price = {INPUT_PRICE}\noutput_price = {OUTPUT_PRICE}\n'
            f'\n[[api_keys]]\nkey = "{KEY}"\naccount = "chaos"\n'
        )
        if opts.fleet:
            self.moto = Moto(workdir / "moto.log")
            self.database = pg.url_of(pg.run_sync(pg.create_database()))
            server = f'[server]\ndatabase_url = "{self.database}"\n{self.moto.toml()}'
            # Workers of a fleet take a dead one's requests over once their lease ran out.
            toml = config_toml(up, opts.concurrency, f"{models}\n[engine]\nlease_seconds = 3\n")
            self.api = Lowtide(workdir / "api", server + toml, extra_args=["--api-only"])
            self.workers = [Worker(workdir / f"worker{i}", self.api.config_path) for i in (0, 1)]
        else:
            self.api = Lowtide(workdir / "server", config_toml(up, opts.concurrency, models))
        self.kills: Counter[str] = Counter()  # processes killed, by kind
        self.aims: Counter[str] = Counter()  # kills, by what they were aimed at
        self.lock = threading.Lock()
        self.aimed: list[threading.Thread] = []

    def start(self) -> None:
        self.api.start(timeout=60)
        for worker in self.workers:
            worker.start(timeout=60)

    def kill_and_restart(self, aim: str = "random") -> None:
        """SIGKILL the engines (and the API now and then, or when a control call is the aim),
        then start them again."""
        with self.lock:
            down: list[Lowtide | Worker] = list(self.workers)
            if not self.workers or aim != "random" or self.rng.random() < 0.5:
                down.append(self.api)
            for proc in down:
                proc.kill()
                self.kills["api" if proc is self.api else "worker"] += 1
            self.aims[aim] += 1
            for proc in down:
                proc.start(timeout=60)

    def aim(self, call: str) -> None:
        """Now and then, a kill a few milliseconds after a control call leaves: before it
        arrives, while it runs, or between its commit and its answer."""
        if self.rng.random() >= self.opts.aimed:
            return
        delay = self.rng.uniform(0.0, 0.03)
        thread = threading.Thread(target=self._aimed, args=(call, delay), daemon=True)
        self.aimed.append(thread)
        thread.start()

    def settle(self) -> None:
        """Wait for the aimed kills under way to have restarted what they killed."""
        for thread in self.aimed:
            thread.join()

    def _aimed(self, call: str, delay: float) -> None:
        time.sleep(delay)
        self.kill_and_restart(call)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.stop()
        if self.moto is not None:
            self.moto.stop()
        if self.database is not None:
            pg.run_sync(pg.drop_database(self.database.rsplit("/", 1)[1]))


# ------------------------------------------------------------------------ clients


class Client:
    """The API as a client that sends a call again while lowtide is down (a kill), and counts
    how often it had to."""

    RETRYABLE = (openai.APIConnectionError, openai.InternalServerError)

    #: Calls sent again (once or more), by what they were (every client's).
    repeated: ClassVar[Counter[str]] = Counter()

    def __init__(self, api: Lowtide) -> None:
        self.sdk = OpenAI(base_url=api.base_url, api_key=KEY, max_retries=0, timeout=30)

    def call(self, fn: Callable[[], T], what: str = "other", timeout: float = 180.0) -> T:
        deadline = time.monotonic() + timeout
        failed = False
        while True:
            try:
                return fn()
            except self.RETRYABLE:
                if time.monotonic() > deadline:
                    raise
                if not failed:
                    failed = True
                    self.repeated[what] += 1
                time.sleep(0.05)

    def post(self, path: str, key: str | None = None) -> dict[str, Any] | None:
        """POST a control route: the batch it answers, None for a 409 (the batch's state
        refuses it)."""
        headers = {"Idempotency-Key": key} if key else {}

        def send() -> dict[str, Any] | None:
            try:
                batch = self.sdk.post(path, cast_to=Batch, options={"headers": headers})
            except openai.ConflictError:
                return None
            return batch.model_dump()

        return self.call(send, path.rsplit("/", 1)[1])

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.call(lambda: self.sdk.batches.retrieve(batch_id).model_dump(), "retrieve")

    def submit(self, name: str, data: bytes, **caps: float) -> str:
        f = self.call(lambda: self.sdk.files.create(file=(f"{name}.jsonl", data), purpose="batch"))
        return self.call(
            lambda: (
                self.sdk.batches.create(
                    input_file_id=f.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    extra_body=dict(caps),
                    extra_headers={"Idempotency-Key": f"create-{name}"},
                ).id
            )
        )

    def files(self, batch: dict[str, Any]) -> tuple[bytes, bytes]:
        def read(file_id: str | None) -> bytes:
            return self.call(lambda: self.sdk.files.content(file_id).content) if file_id else b""

        return read(batch["output_file_id"]), read(batch["error_file_id"])

    def all_batches(self) -> list[dict[str, Any]]:
        return self.call(lambda: [b.model_dump() for b in self.sdk.batches.list(limit=100)])


@dataclass
class Toggles:
    """The pause / resume client's record."""

    pauses: int = 0
    resumes: int = 0
    checks: int = 0
    lost: int = 0  # a state it was answered that did not hold at the next check
    refused: Counter[str] = field(default_factory=Counter)
    sent_while_paused: int = 0  # upstream calls of the batch 1 s after a pause and before resume
    paused_seconds: float = 0.0


def toggle(c: Client, lives: Lives, up: Upstream, batch_id: str, out: Toggles) -> None:
    opts = lives.opts
    rng = random.Random(opts.seed + 2)
    paused = False
    paused_at, before = 0.0, 0
    while out.pauses + out.resumes < opts.toggles or paused:
        time.sleep(rng.uniform(0.2, 1.5))
        seen = c.batch(batch_id)
        if seen["status"] in TERMINAL:
            out.refused["ended"] += 1
            return
        if seen["status"] == "in_progress":
            out.checks += 1
            out.lost += (seen["paused_at"] is not None) != paused
        verb = "resume" if paused else "pause"
        if paused:  # what the upstream got from the batch once the requests in flight ended
            out.sent_while_paused += _calls(up, "pause") - before
            out.paused_seconds += time.monotonic() - paused_at
        lives.aim(verb)
        if c.post(f"/batches/{batch_id}/{verb}") is None:
            out.refused[seen["status"]] += 1
            continue
        paused = not paused
        out.pauses += paused
        out.resumes += not paused
        if paused:
            paused_at = time.monotonic()
            time.sleep(1.0)  # the requests already on the wire come back
            before = _calls(up, "pause")


def _calls(up: Upstream, prefix: str) -> int:
    per_key: dict[str, int] = up.stats(per_key=True)["per_key"]
    return sum(n for k, n in per_key.items() if k.startswith(prefix + " "))


@dataclass
class Retries:
    answered: list[str] = field(default_factory=list)  # the retry batches the client was given
    switched: dict[str, int] = field(default_factory=dict)  # the fake's per-key counts then


def retry(c: Client, lives: Lives, up: Upstream, source: str, out: Retries) -> None:
    opts = lives.opts
    rng = random.Random(opts.seed + 3)
    while c.batch(source)["status"] not in TERMINAL:
        time.sleep(0.2)
    out.switched = dict(up.stats(per_key=True)["per_key"])
    up.configure(fail_contains=FAIL_CAP)  # the source's failed lines succeed from now on
    for n in range(opts.retries):
        time.sleep(rng.uniform(0.0, 1.5))
        lives.aim("retry")
        batch = c.post(f"/batches/{source}/retry", key=f"chaos-retry-{opts.seed}-{n}")
        assert batch is not None, "the source batch refused a retry"
        out.answered.append(batch["id"])


class Watch:
    """Polls the batches; records each one's statuses, stop reasons and cancelling_at."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.ids: list[str] = []
        self.statuses: dict[str, list[str]] = {}
        self.cancelling_at: dict[str, set[int]] = {}
        self.reasons: dict[str, set[str]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for batch_id in list(self.ids):
                self.see(self.c.batch(batch_id))
            time.sleep(0.1)

    def see(self, b: dict[str, Any]) -> None:
        seq = self.statuses.setdefault(b["id"], [])
        if not seq or seq[-1] != b["status"]:
            seq.append(b["status"])
        if b.get("cancelling_at"):
            self.cancelling_at.setdefault(b["id"], set()).add(b["cancelling_at"])
        if b.get("stop_reason"):
            self.reasons.setdefault(b["id"], set()).add(b["stop_reason"])

    def backward_moves(self, batch_id: str) -> int:
        seq = [s for s in self.statuses.get(batch_id, []) if s not in TERMINAL]
        return sum(1 for a, b in itertools.pairwise(seq) if ORDER[b] <= ORDER[a])


# ------------------------------------------------------------------------ the run


@dataclass
class Judged:
    name: str
    batch: dict[str, Any]
    report: Report
    data: bytes
    out: bytes
    err: bytes
    expected: str
    stop_reason: str | None = None
    problems: list[str] = field(default_factory=list)


def run(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    began = time.monotonic()
    up = Upstream(
        "--seed", str(opts.seed), "--latency", str(opts.latency),
        "--jitter", str(opts.latency / 2), "--fail-contains", FAIL_ALL,
        "--completion-tokens", str(COMPLETION), log=workdir / "upstream.log",
    )  # fmt: skip
    lives = Lives(opts, workdir, up)
    try:
        lives.start()
        return _drive(opts, up, lives, began)
    finally:
        lives.stop()
        up.stop()


def _drive(opts: argparse.Namespace, up: Upstream, lives: Lives, began: float) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    sizes = {"source": opts.source_lines, "pause": opts.lines, "error-cap": opts.cap_lines}
    sizes["cost-cap"] = opts.cap_lines
    data = {name: input_file(name, n) for name, n in sizes.items()}
    c = Client(lives.api)
    max_cost = round(0.4 * expected_cost("cost-cap", opts.cap_lines), 10)
    ids = {
        "source": c.submit("source", data["source"]),
        "pause": c.submit("pause", data["pause"]),
        "error-cap": c.submit("error-cap", data["error-cap"], max_error_rate=ERROR_RATE),
        "cost-cap": c.submit("cost-cap", data["cost-cap"], max_cost=max_cost),
    }
    watch = Watch(Client(lives.api))
    watch.ids.extend(ids.values())
    toggles, retries = Toggles(), Retries()
    threads = [
        threading.Thread(target=watch.run, daemon=True),
        threading.Thread(
            target=toggle, args=(Client(lives.api), lives, up, ids["pause"], toggles), daemon=True
        ),
        threading.Thread(
            target=retry, args=(Client(lives.api), lives, up, ids["source"], retries), daemon=True
        ),
    ]
    for t in threads:
        t.start()
    while lives.aims["random"] < opts.kills and not _all_done(c, ids, retries, threads):
        time.sleep(rng.uniform(opts.kill_min, opts.kill_max))
        lives.kill_and_restart()
        watch.ids[:] = [*ids.values(), *retries.answered]
    for t in threads[1:]:
        t.join(timeout=600)
    lives.settle()
    watch.ids[:] = [*ids.values(), *retries.answered]
    judged = [_judge(c, lives, name, ids[name], data[name]) for name in ids]
    source_failed = [r for r in orjson_lines(judged[0].err)]
    retry_data = _retry_input(data["source"], source_failed)
    judged += [
        _judge(c, lives, f"retry {n + 1}", b, retry_data) for n, b in enumerate(retries.answered)
    ]
    watch.stop.set()
    threads[0].join()
    for j in judged:
        watch.see(j.batch)
    return _figures(opts, c, up, lives, ids, judged, watch, toggles, retries, max_cost, began)


def _all_done(
    c: Client, ids: dict[str, str], retries: Retries, threads: list[threading.Thread]
) -> bool:
    if any(t.is_alive() for t in threads[1:]):
        return False
    return all(c.batch(b)["status"] in TERMINAL for b in [*ids.values(), *retries.answered])


def orjson_lines(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def _retry_input(source: bytes, failed: list[dict[str, Any]]) -> bytes:
    wanted = {r["custom_id"] for r in failed}
    kept = [line for line in source.splitlines() if orjson.loads(line)["custom_id"] in wanted]
    return b"".join(line + b"\n" for line in kept)


def _judge(c: Client, lives: Lives, name: str, batch_id: str, data: bytes) -> Judged:
    deadline = time.monotonic() + 900
    while (batch := c.batch(batch_id))["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} ({batch_id}) stuck in {batch['status']}")
        time.sleep(0.2)
    out, err = c.files(batch)
    db = None if lives.database else lives.api.workdir / "data" / "lowtide.db"
    expected = "cancelled" if name.endswith("-cap") else "completed"
    reason = {"error-cap": "max_error_rate", "cost-cap": "max_cost"}.get(name)
    return Judged(
        name, batch, check_batch(data, out, err, batch, db), data, out, err, expected, reason
    )


# ------------------------------------------------------------------------ figures


def _figures(
    opts: argparse.Namespace,
    c: Client,
    up: Upstream,
    lives: Lives,
    ids: dict[str, str],
    judged: list[Judged],
    watch: Watch,
    toggles: Toggles,
    retries: Retries,
    max_cost: float,
    began: float,
) -> dict[str, Any]:
    per_key: dict[str, int] = up.stats(per_key=True)["per_key"]
    answered = _answered(per_key, retries.switched)
    billed: Counter[str] = Counter()
    rows = []
    for j in judged:
        keys = _keys(j.data)
        outs, errs = orjson_lines(j.out), orjson_lines(j.err)
        billed.update(keys[r["custom_id"]] for r in outs)
        _judge_stop(j, keys, errs, per_key, watch, max_cost)
        if j.batch["status"] != j.expected:
            j.problems.append(f"ended {j.batch['status']}, expected {j.expected}")
        if j.name == "pause" and j.batch["paused_at"] is not None:
            j.problems.append("still paused")
        if j.name.startswith("retry") and len(outs) != j.report.input_lines:
            j.problems.append(f"{j.report.input_lines - len(outs)} retried lines failed again")
        cost = sum(line_cost(_usage(r)[0], _usage(r)[1]) for r in outs)
        if abs(cost - j.batch["cost"]["amount"]) > 1e-8:
            j.problems.append(f"cost {j.batch['cost']['amount']} != its lines' {cost:.10f}")
        rows.append(_row(j, keys, errs, per_key, watch))
    over_billed = sum(max(0, n - answered.get(k, 0)) for k, n in billed.items())
    retry_of = [
        b["id"]
        for b in c.all_batches()
        if (b.get("metadata") or {}).get("retry_of") == ids["source"]
    ]
    problems = [f"{j.name}: {p}" for j in judged for p in [*j.report.problems, *j.problems]]
    if sorted(retry_of) != sorted(retries.answered) or len(retry_of) != opts.retries:
        problems.append(
            f"retry batches {sorted(retry_of)}, the client was given {retries.answered}"
        )
    if over_billed:
        problems.append(f"{over_billed} lines billed more often than the upstream answered them")
    if toggles.lost:
        problems.append(f"{toggles.lost} pause/resume states did not hold")
    if toggles.sent_while_paused:
        problems.append(f"{toggles.sent_while_paused} requests sent while paused")
    result = {
        "mode": "PostgreSQL fleet (an API, two workers, S3 on moto)" if opts.fleet else "SQLite",
        "kills": sum(lives.aims.values()),
        "kills_by_aim": dict(lives.aims),
        "processes_killed": dict(lives.kills),
        "rows": rows,
        "lost": sum(len(j.report.lost) for j in judged),
        "duplicated": sum(len(j.report.duplicated) for j in judged),
        "double_billed": sum(j.report.double_billed for j in judged),
        "answered_upstream": sum(answered.values()),
        "billed_lines": sum(billed.values()),
        "over_billed": over_billed,
        "toggles": {
            "pauses": toggles.pauses,
            "resumes": toggles.resumes,
            "checks": toggles.checks,
            "lost": toggles.lost,
            "refused_409": dict(toggles.refused),
            "sent_while_paused": toggles.sent_while_paused,
            "paused_seconds": round(toggles.paused_seconds, 1),
        },
        "retries": {
            "asked": opts.retries,
            "answered": len(retries.answered),
            "retry_of": len(retry_of),
        },
        "calls_repeated": dict(Client.repeated),
        "max_cost": max_cost,
        "problems": problems,
        "seconds": round(time.monotonic() - began, 1),
    }
    result["ok"] = not problems and lives.aims["random"] > 0
    return result


def _answered(per_key: dict[str, int], switched: dict[str, int]) -> dict[str, int]:
    """Calls the fake answered 200, by line: every call but the marked ones (the source's
    marked lines were answered only after the switch)."""
    out = {}
    for key, n in per_key.items():
        if FAIL_CAP in key:
            continue
        out[key] = n - switched.get(key, 0) if "FAILR" in key else n
    return out


def _keys(data: bytes) -> dict[str, str]:
    lines = orjson_lines(data)
    return {r["custom_id"]: r["body"]["messages"][-1]["content"] for r in lines}


def _usage(r: dict[str, Any]) -> tuple[int, int]:
    usage = r["response"]["body"]["usage"]
    return int(usage["prompt_tokens"]), int(usage["completion_tokens"])


def _code(r: dict[str, Any]) -> str:
    return str(
        ((r.get("error") or {}).get("code"))
        or ((r["response"] or {}).get("body") or {}).get("error", {}).get("code")
    )


def _judge_stop(
    j: Judged,
    keys: dict[str, str],
    errs: list[dict[str, Any]],
    per_key: dict[str, int],
    watch: Watch,
    max_cost: float,
) -> None:
    bid = j.batch["id"]
    if watch.backward_moves(bid):
        j.problems.append(f"statuses went back: {watch.statuses[bid]}")
    if len(watch.cancelling_at.get(bid, ())) > 1:
        j.problems.append(f"stopped more than once: cancelling_at {watch.cancelling_at[bid]}")
    if len(watch.reasons.get(bid, ())) > 1:
        j.problems.append(f"stop_reason changed: {watch.reasons[bid]}")
    if j.batch.get("stop_reason") != j.stop_reason:
        j.problems.append(f"stop_reason {j.batch.get('stop_reason')}, expected {j.stop_reason}")
    stopped = {r["custom_id"] for r in errs if _code(r) == STOPPED}
    never_sent = {cid for cid, key in keys.items() if per_key.get(key, 0) == 0}
    if j.stop_reason is None and stopped:
        j.problems.append(f"{len(stopped)} lines batch_stopped in a batch no cap stopped")
    if j.stop_reason is not None:
        if never_sent - stopped:
            j.problems.append(f"{len(never_sent - stopped)} lines never sent are not batch_stopped")
        if not stopped:
            j.problems.append("no line batch_stopped")
    if j.stop_reason == "max_cost" and j.batch["cost"]["amount"] < max_cost:
        j.problems.append(f"stopped on max_cost at {j.batch['cost']['amount']} < {max_cost}")


def _row(
    j: Judged,
    keys: dict[str, str],
    errs: list[dict[str, Any]],
    per_key: dict[str, int],
    watch: Watch,
) -> dict[str, Any]:
    stopped = [r["custom_id"] for r in errs if _code(r) == STOPPED]
    return {
        "batch": j.name,
        "lines": j.report.input_lines,
        "status": j.batch["status"],
        "stop_reason": j.batch.get("stop_reason"),
        "output": j.report.output_lines,
        "errors": j.report.error_lines,
        "batch_stopped": len(stopped),
        "stopped_but_sent": sum(1 for cid in stopped if per_key.get(keys[cid], 0) > 0),
        "stops_seen": len(watch.cancelling_at.get(j.batch["id"], ())),
        "lost": len(j.report.lost),
        "duplicated": len(j.report.duplicated),
        "double_billed": j.report.double_billed,
        "cost": j.batch["cost"]["amount"],
        "problems": [*j.report.problems, *j.problems],
    }


def table(r: dict[str, Any]) -> str:
    out = [
        "| batch | lines | status (stop_reason) | output / error lines "
        "| batch_stopped (sent before a kill) | stops seen | lost | duplicated "
        "| double-billed | cost |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        reason = f" ({row['stop_reason']})" if row["stop_reason"] else ""
        out.append(
            f"| {row['batch']} | {row['lines']:,} | {row['status']}{reason} "
            f"| {row['output']} / {row['errors']} "
            f"| {row['batch_stopped']} ({row['stopped_but_sent']}) "
            f"| {row['stops_seen']} | {row['lost']} | {row['duplicated']} | {row['double_billed']} "
            f"| {row['cost']:.6f} |"
        )
    t = r["toggles"]
    killed = ", ".join(f"{k} {n}" for k, n in r["processes_killed"].items())
    aims = ", ".join(f"{k} {n}" for k, n in r["kills_by_aim"].items())
    out += [
        "",
        f"Mode: {r['mode']}. Kills: {r['kills']}, by aim: {aims} ({killed} "
        f"processes SIGKILLed). Calls sent again after failing while lowtide was down: "
        f"{', '.join(f'{k} {n}' for k, n in r['calls_repeated'].items()) or 'none'}.",
        f"Pause / resume: {t['pauses']} pauses and {t['resumes']} resumes answered, {t['checks']} "
        f"checks of the last answered state ({t['lost']} did not hold), 409s {t['refused_409']}; "
        f"requests sent while paused (after the first second): {t['sent_while_paused']} over "
        f"{t['paused_seconds']} s paused.",
        f"Retries: {r['retries']['asked']} asked, {r['retries']['answered']} answered, "
        f"{r['retries']['retry_of']} batches with metadata.retry_of = the source.",
        f"Billing against the upstream's log: {r['answered_upstream']} requests answered 200, "
        f"{r['billed_lines']} output lines billed (the rest: answers lost to a kill, sent "
        f"again), {r['over_billed']} lines billed more often than the upstream answered them; "
        f"max_cost {r['max_cost']}.",
        "Result: " + ("OK, every promise holds." if r["ok"] else f"FAILED: {r['problems']}"),
    ]
    return "\n".join(out)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lines", type=int, default=3000, help="lines of the paused batch")
    p.add_argument("--cap-lines", type=int, default=1500, help="lines of each capped batch")
    p.add_argument("--source-lines", type=int, default=300, help="lines of the retried batch")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--toggles", type=int, default=20, help="pauses + resumes answered")
    p.add_argument("--kills", type=int, default=60, help="at most")
    p.add_argument("--kill-min", type=float, default=0.5, help="seconds between kills")
    p.add_argument("--kill-max", type=float, default=2.5)
    p.add_argument("--aimed", type=float, default=0.5, help="share of control calls killed")
    p.add_argument("--concurrency", type=int, default=16, help="the backend's max_concurrency")
    p.add_argument("--latency", type=float, default=0.1, help="the upstream's mean latency (s)")
    p.add_argument("--fleet", action="store_true", help="PostgreSQL + S3: an API, two workers")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    try:
        with scratch(opts.workdir) as workdir, ending_children():
            result = run(opts, workdir)
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        return 130
    if opts.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(table(result))
        print(f"({result['seconds']} s, seed {opts.seed})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
