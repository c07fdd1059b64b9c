"""Run every benchmark (each in its own process, at full size unless ``--tiny``) and print one
table, with the machine, the date and the command; ``bench/all`` and ``make bench`` run this.

    .venv/bin/python bench/run_all.py [--tiny] [--only validate dispatch ...]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Report, machine_busy, print_report

from lowtide.testing import children
from lowtide.testing.children import ending_children

BENCH = Path(__file__).resolve().parent
NAMES = (
    "validate",
    "upload",
    "dispatch",
    "makespan",
    "memory",
    "finalise",
    "control_plane",
    "prefix_order",
    "adaptive",
    "budgets",
)
#: The scheduling benchmarks measure lowtide with its feature on only when asked (without the
#: flag they measure it as it was before the feature: docs/scheduling.md, "Benchmarks").
FLAGS = {"adaptive": ["--adaptive"], "budgets": ["--budgets"]}


def machine() -> list[str]:
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = models[0] if models else platform.machine()
    return [
        f"machine: nproc {os.cpu_count()}, {total_kib / 1024**2:.0f} GiB memory "
        f"(`free -g` total), {model}",
        f"python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"lowtide at {git_commit()}",
    ]


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=BENCH,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def upstream_capacity(tiny: bool) -> None:
    """The fake upstream's own speed, from ``bench/upstream_speed.py``, printed as it is."""
    sizes = ["--requests", "500", "--warmup", "100"] if tiny else ["--requests", "20000"]
    print("The fake upstream alone (bench/upstream_speed.py):", flush=True)
    children.run([sys.executable, str(BENCH / "upstream_speed.py"), *sizes], check=True)
    print(flush=True)


def run_one(name: str, tiny: bool, out: Path) -> Report:
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *FLAGS.get(name, []), "--json", str(out)]
    if tiny:
        cmd.append("--tiny")
    t0 = time.monotonic()
    done = children.run(cmd, capture_output=True, text=True)
    print(f"  {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return Report.from_json(out.read_bytes())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--tiny", action="store_true", help="every benchmark at its tiny size")
    p.add_argument("--only", nargs="+", choices=NAMES, help="run only these")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    before, t0 = machine_busy(), time.monotonic()
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.argv)
    print("\n".join([f"date: {started}", f"command: {command}", *machine()]))
    print(flush=True)
    report, failed = Report(), []
    try:
        # Each benchmark is a child in its own process group: on Ctrl-C or SIGTERM here, it is
        # sent SIGTERM, on which it ends its own children before it exits.
        with tempfile.TemporaryDirectory(prefix="lowtide-bench-all-") as tmp, ending_children():
            upstream_capacity(args.tiny)
            for name in args.only or NAMES:
                try:
                    report.extend(run_one(name, args.tiny, Path(tmp) / f"{name}.json"))
                except RuntimeError as exc:
                    failed.append(name)
                    print(exc, file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; every process it started has ended", file=sys.stderr)
        return 130
    busy, total = machine_busy()
    share = (busy - before[0]) / max(1e-9, total - before[1])
    report.note(
        f"all: {time.monotonic() - t0:.0f} s in all; the machine's CPUs were {share:.0%} busy"
    )
    print_report(report)
    if failed:
        print(f"FAILED to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
