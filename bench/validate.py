"""validate: a 500 MB, 50,000-line chat file through lowtide's validator (every rule of
docs/api-compatibility.md), against reading the same file and decoding each line with the fastest
JSON decoder available, doing nothing else.

Each side runs in a child process of its own, so that its peak RSS (VmHWM) is its own.

    .venv/bin/python bench/validate.py [--size 500000000] [--lines 50000] [--tiny]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from common import MIB, MODEL, Report, Row, main, mb_s, mib, peak_rss, write_chat_file

from lowtide.domain.validation import Limits, Validator
from lowtide.testing import children

CHUNK = 1 << 20  # what LocalBlobStore.stream hands the engine
# (module, function) of the decoders to try for the baseline, fastest first where known.
DECODERS = (("msgspec.json", "decode"), ("orjson", "loads"), ("simdjson", "loads"))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=500_000_000, help="file size in bytes")
    p.add_argument("--lines", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=2, help="runs of each side; the best counts")


def decoders() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {}
    for module, name in DECODERS:
        try:
            found[module] = getattr(importlib.import_module(module), name)
        except ImportError:
            continue
    return found


def measure_validator(path: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    validator = Validator("/v1/chat/completions", lambda model: model == MODEL, Limits())
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            validator.feed(chunk)
    result = validator.finish()
    seconds = time.perf_counter() - t0
    if not result.ok:
        raise SystemExit(f"the generated file did not validate: {result.errors[:3]}")
    return {"seconds": seconds, "lines": len(result.requests), "rss": peak_rss()}


def measure_decoder(path: Path, module: str) -> dict[str, Any]:
    # Buffered line iteration finds newlines with memchr and reuses its buffer: the fastest
    # way to read lines that Python has (faster than bytes.split, which scans byte by byte).
    loads = decoders()[module]
    t0 = time.perf_counter()
    n = 0
    with path.open("rb", buffering=CHUNK) as f:
        for line in f:
            if not line.isspace():
                loads(line)
                n += 1
    return {"seconds": time.perf_counter() - t0, "lines": n, "rss": peak_rss()}


def child(kind: str, path: Path) -> dict[str, Any]:
    """Run one side in a fresh process; returns its figures."""
    out = children.run(
        [sys.executable, __file__, "--measure", kind, str(path)],
        check=True,
        capture_output=True,
    )
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def best(kind: str, path: Path, repeat: int) -> dict[str, Any]:
    runs = [child(kind, path) for _ in range(repeat)]
    return min(runs, key=lambda r: float(r["seconds"]))


def run(args: argparse.Namespace, workdir: Path) -> Report:
    size, lines = (2_000_000, 200) if args.tiny else (args.size, args.lines)
    repeat = 1 if args.tiny else args.repeat
    path = workdir / "input.jsonl"
    file_bytes = write_chat_file(path, lines, size)
    available = decoders()
    if not available:
        raise SystemExit("no JSON decoder found for the baseline")
    base_runs = {name: best(name, path, repeat) for name in available}
    base_name, base = min(base_runs.items(), key=lambda item: float(item[1]["seconds"]))
    mine = best("validator", path, repeat)
    if mine["lines"] != lines or base["lines"] != lines:
        raise SystemExit(f"line counts differ: {mine['lines']} / {base['lines']} / {lines}")
    speed = file_bytes / mine["seconds"]
    base_speed = file_bytes / base["seconds"]
    report = Report()
    report.add(
        Row(
            "validate",
            f"throughput, {file_bytes / 1e6:,.0f} MB / {lines:,} lines",
            f"{mb_s(file_bytes, mine['seconds'])} ({mine['seconds']:.2f} s)",
            f"{mb_s(file_bytes, base['seconds'])} ({base_name} per line)",
            speed / base_speed,
            "≥ 0.50×",
            speed / base_speed >= 0.5,
        )
    )
    report.add(
        Row(
            "validate",
            "peak RSS of the process",
            mib(mine["rss"]),
            mib(base["rss"]),
            mine["rss"] / base["rss"],
            "≤ 200 MiB",
            mine["rss"] <= 200 * MIB,
        )
    )
    others = ", ".join(f"{name} {mb_s(file_bytes, r['seconds'])}" for name, r in base_runs.items())
    report.note(f"validate: decoders tried for the baseline: {others}; best of {repeat} runs")
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:  # a child run by ``child``: KIND PATH
        kind, file = sys.argv[2], Path(sys.argv[3])
        figures = measure_validator(file) if kind == "validator" else measure_decoder(file, kind)
        sys.stdout.buffer.write(orjson.dumps(figures))
    else:
        main(__doc__, add_args, run)
