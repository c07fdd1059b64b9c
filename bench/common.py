"""Shared parts of the benchmarks in ``bench/``: input files, processes, /proc readings, tables.

Every benchmark prints what it measured next to a baseline measured in the same run on the same
machine, and the ratio: absolute times alone mean little on shared machines. A script is run
as ``.venv/bin/python bench/<name>.py`` (full size), with ``--tiny`` for a seconds-long run that
only shows it still works (the test suite does that), and ``--json FILE`` to hand its rows to
``bench/all``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from lowtide.testing.harness import Lowtide, Upstream, ending_children

if TYPE_CHECKING:
    import openai

MODEL = "fake-model"
ENDPOINT: Final = "/v1/chat/completions"
API_KEY = "sk-bench-local"
MIB = 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------- the report


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a benchmark table. ``met`` is None for a row given for context only."""

    benchmark: str
    metric: str
    measured: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def extend(self, other: Report) -> None:
        self.rows += other.rows
        self.notes += other.notes

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"rows": [dataclasses.asdict(r) for r in self.rows], "notes": self.notes}
        )

    @classmethod
    def from_json(cls, data: bytes) -> Report:
        loaded = orjson.loads(data)
        return cls([Row(**row) for row in loaded["rows"]], list(loaded["notes"]))


_COLUMNS = ("benchmark", "metric", "measured", "baseline", "ratio", "target", "result")


def _cells(row: Row) -> tuple[str, ...]:
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
    result = {None: "", True: "met", False: "MISSED"}[row.met]
    return (row.benchmark, row.metric, row.measured, row.baseline, ratio, row.target, result)


def table(rows: Sequence[Row]) -> str:
    """A plain-text table (also valid Markdown), one line per row."""
    cells = [_COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]

    def fmt(line: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), rule, *(fmt(line) for line in cells[1:])])


def print_report(report: Report) -> None:
    print(table(report.rows))
    for note in report.notes:
        print(f"- {note}")
    sys.stdout.flush()


# ------------------------------------------------------------------------------- running a script


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a seconds-long run: does it still work?")
    p.add_argument("--json", type=Path, help="also write the rows to this file (for bench/all)")
    p.add_argument("--workdir", type=Path, help="where to put files (default: a temp folder)")
    return p


def main(
    description: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace, Path], Report],
) -> None:
    """Parse the flags, run the benchmark in a scratch folder, print its table.

    Every process the benchmark starts (through the harness) is ended with its process group
    before the script exits, however it exits: done, failed, Ctrl-C or SIGTERM.
    """
    p = parser(description)
    add_args(p)
    args = p.parse_args()
    before = machine_busy()
    try:
        # Children end before the scratch folder goes: they may still be writing in it.
        with scratch(args.workdir) as workdir, ending_children():
            report = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        sys.exit(130)
    report.note(f"{report.rows[0].benchmark}: {load_note(before)}")
    print_report(report)
    if args.json:
        args.json.write_bytes(report.to_json())


@contextlib.contextmanager
def scratch(workdir: Path | None) -> Iterator[Path]:
    """A scratch folder on the disk the server uses, removed afterwards (unless given)."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
        return
    path = Path(tempfile.mkdtemp(prefix="lowtide-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------- /proc readings


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: split after its closing parenthesis; utime and
        # stime are fields 14 and 15 of the line, i.e. 11 and 12 after the name.
        after_name = f.read().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / _CLK_TCK


def peak_rss(pid: int | str = "self") -> int:
    """The process's peak resident set size in bytes (``VmHWM``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _CLK_TCK, sum(fields) / _CLK_TCK


def load_note(before: tuple[float, float]) -> str:
    """How busy the machine was since ``before``: this run and anything else running."""
    busy, total = machine_busy()
    share = (busy - before[0]) / max(1e-9, total - before[1])
    return (
        f"the machine's {os.cpu_count()} CPUs were {share:.0%} busy during the run "
        "(this benchmark's processes included)"
    )


# ------------------------------------------------------------------------------- input files


def chat_line(i: int, history: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """Request ``i`` of a chat batch; ``history`` are earlier turns sent before its question."""
    messages = [*history, {"role": "user", "content": f"Say something about line {i}."}]
    return {
        "custom_id": f"req-{i:07d}",
        "method": "POST",
        "url": ENDPOINT,
        "body": {"model": MODEL, "messages": messages, "max_tokens": 32},
    }


# Turns of a made-up conversation, a little multilingual as real traffic is: the JSON decoder
# then meets escapes and non-ASCII text, not only one long ASCII string.
_TURNS = (
    "Summarise the report below in three bullet points, keeping every figure exact. ",
    "Here is the summary — the figures are unchanged: revenue rose 4.2 %, costs fell 1.1 %. ",
    "Translate it for the Lyon office, s'il vous plaît: « les coûts ont baissé ». ",
    'Quote the line that says "net margin" and explain it\tbriefly.\n',
    "Réponse : la marge nette a augmenté grâce à la baisse des coûts — 详细信息见附件. ",
)


def _line_bytes(history: list[dict[str, str]], i: int) -> int:
    return len(orjson.dumps(chat_line(i, history))) + 1  # +1: the newline


def _history(budget: int, i: int) -> list[dict[str, str]]:
    """A system prompt and alternating turns, so that line ``i`` is ``budget`` bytes at most
    (and lines with smaller numbers, no longer, are too)."""
    history = [{"role": "system", "content": "You are a careful analyst. Answer briefly."}]
    role, turn = "user", 0
    while True:
        text = "".join(_TURNS[(turn + k) % len(_TURNS)] for k in range(6))
        longer = [*history, {"role": role, "content": f"({turn}) {text}"}]
        if _line_bytes(longer, i) > budget:
            break
        history, role, turn = longer, ("assistant" if role == "user" else "user"), turn + 1
    room = budget - _line_bytes([*history, {"role": role, "content": ""}], i)
    if room > 0:  # fill what is left with plain ASCII, one byte per character
        words = "and the figures for the next quarter follow the same pattern as before "
        history.append({"role": role, "content": (words * (room // len(words) + 1))[:room]})
    return history


def write_chat_file(path: Path, lines: int, total_bytes: int | None = None) -> int:
    """Write a batch input file of ``lines`` chat requests; with ``total_bytes``, give every
    line an earlier conversation so that the file is about that big (never bigger). Returns
    the file's size."""
    history = _history(total_bytes // lines, lines) if total_bytes is not None else []
    with path.open("wb") as f:
        for start in range(0, lines, 1000):
            chunk = (chat_line(i, history) for i in range(start, min(lines, start + 1000)))
            f.write(b"".join(orjson.dumps(line) + b"\n" for line in chunk))
    return path.stat().st_size


def request_bodies(lines: int) -> list[bytes]:
    """The bodies the engine sends for ``write_chat_file(path, lines)``: each line's ``body``."""
    return [orjson.dumps(chat_line(i)["body"]) for i in range(lines)]


# ------------------------------------------------------------------------------- processes


def config_toml(upstream: Upstream | None, max_concurrency: int = 64, extra: str = "") -> str:
    """A server with no API keys (loopback only) and one backend: the fake upstream."""
    backend = ""
    if upstream is not None:
        backend = f"""
[[backends]]
name = "fake"
base_url = "{upstream.base_url}"
api_key = "EMPTY"
models = ["{MODEL}"]
max_concurrency = {max_concurrency}
timeout = 120
"""
    return f"{backend}\n{_no_rate_limits()}\n{extra}\n"


def _no_rate_limits() -> str:
    """Lift the per-account API rate limits: polls and latency samples would hit them."""
    from lowtide.settings import Settings

    if "account_defaults" not in Settings.model_fields:
        return ""
    fields = Settings.model_fields["account_defaults"].annotation
    names = [name for name in getattr(fields, "model_fields", {}) if name.endswith("_per_minute")]
    return "[account_defaults]\n" + "".join(f"{name} = 1000000000\n" for name in names)


@contextlib.contextmanager
def upstream(workdir: Path, *args: str) -> Iterator[Upstream]:
    """The fake upstream as its own process (so it has its own CPU, like a real backend)."""
    up = Upstream("--seed", "1", *args, log=workdir / "upstream.log")
    try:
        yield up
    finally:
        up.stop()


@contextlib.contextmanager
def server(
    workdir: Path, up: Upstream | None, max_concurrency: int = 64, extra: str = ""
) -> Iterator[Lowtide]:
    """``lowtide serve`` as a process, pointed at ``up``; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    lt = Lowtide(workdir, config_toml(up, max_concurrency, extra))
    lt.start()
    try:
        yield lt
    finally:
        lt.stop()


def pid_of(lt: Lowtide) -> int:
    assert lt.proc is not None, "the server is not running"
    return lt.proc.pid


def client(lt: Lowtide) -> openai.OpenAI:
    import openai  # here, not at the top: children that measure their own RSS never load it

    return openai.OpenAI(base_url=lt.base_url, api_key=API_KEY, max_retries=0, timeout=600)


def upload(c: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return c.files.create(file=(path.name, f), purpose="batch").id


@dataclass(frozen=True, slots=True)
class BatchRun:
    batch: Any  # openai.types.Batch
    seconds: float  # from create to a terminal status, as the client saw it
    #: Seconds from create to the first poll that saw each status.
    seen: dict[str, float]

    def phase(self, start: str, end: str = "completed") -> float | None:
        """Seconds between the first polls that saw ``start`` and ``end``, if both were seen."""
        if start in self.seen and end in self.seen:
            return self.seen[end] - self.seen[start]
        return None


def run_batch(
    c: openai.OpenAI, file_id: str, poll: float = 0.05, timeout: float = 900.0
) -> BatchRun:
    """Create a batch on ``file_id`` and poll it until it ends."""
    t0 = time.perf_counter()
    batch = c.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h")
    seen: dict[str, float] = {batch.status: time.perf_counter() - t0}
    deadline = t0 + timeout
    while batch.status not in TERMINAL:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"batch {batch.id} still {batch.status} after {timeout:g}s")
        time.sleep(poll)
        batch = c.batches.retrieve(batch.id)
        seen.setdefault(batch.status, time.perf_counter() - t0)
    return BatchRun(batch, time.perf_counter() - t0, seen)


def check_completed(run: BatchRun, expected: int) -> None:
    counts = run.batch.request_counts
    if run.batch.status != "completed" or counts.completed != expected:
        raise RuntimeError(
            f"batch {run.batch.id} ended {run.batch.status} with {counts}; "
            f"errors: {run.batch.errors}"
        )


# ------------------------------------------------------------------------------- formatting


def mib(n: float) -> str:
    return f"{n / MIB:,.0f} MiB"


def mb_s(n_bytes: float, seconds: float) -> str:
    return f"{n_bytes / seconds / 1e6:,.0f} MB/s"


def per_s(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f} req/s"


def secs(s: float) -> str:
    return f"{s:.2f} s"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
