"""upload: a 500 MB, 50,000-line chat file uploaded through the Files API with the ``openai``
SDK, against copying the same file on the same disk (with an fsync, as the server does before
it publishes a file).

    .venv/bin/python bench/upload.py [--size 500000000] [--lines 50000] [--tiny]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import (
    MIB,
    Report,
    Row,
    client,
    fsync_path,
    main,
    mb_s,
    mib,
    peak_rss,
    pid_of,
    server,
    upload,
    write_chat_file,
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", type=int, default=500_000_000, help="file size in bytes")
    p.add_argument("--lines", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=2, help="runs of each side; the best counts")


def copy_seconds(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fsync_path(dst)
    seconds = time.perf_counter() - t0
    dst.unlink()
    return seconds


def run(args: argparse.Namespace, workdir: Path) -> Report:
    size, lines = (2_000_000, 200) if args.tiny else (args.size, args.lines)
    repeat = 1 if args.tiny else args.repeat
    path = workdir / "input.jsonl"
    file_bytes = write_chat_file(path, lines, size)
    fsync_path(path)  # so that the first timed side does not pay for writing it back
    copies, uploads = [], []
    with server(workdir / "server", None) as lt:
        c = client(lt)
        rss_before = peak_rss(pid_of(lt))
        for _ in range(repeat):
            copies.append(copy_seconds(path, workdir / "copy.jsonl"))
            t0 = time.perf_counter()
            file_id = upload(c, path)
            uploads.append(time.perf_counter() - t0)
            stored = c.files.retrieve(file_id).bytes
            if stored != file_bytes:
                raise SystemExit(f"uploaded {stored} bytes of {file_bytes}")
            c.files.delete(file_id)
        rss = peak_rss(pid_of(lt))
    up, copy = min(uploads), min(copies)
    report = Report()
    report.add(
        Row(
            "upload",
            f"throughput, {file_bytes / 1e6:,.0f} MB via openai SDK",
            f"{mb_s(file_bytes, up)} ({up:.2f} s)",
            f"{mb_s(file_bytes, copy)} (copy + fsync)",
            copy / up,
            "≥ 0.50×",
            copy / up >= 0.5,
        )
    )
    report.add(
        Row(
            "upload",
            "server peak RSS (context)",
            mib(rss),
            f"{mib(rss_before)} before",
            rss / rss_before,
        )
    )
    if rss - rss_before > 100 * MIB:
        report.note("upload: the server's RSS grew by over 100 MiB: is the upload buffered?")
    report.note(f"upload: best of {repeat} runs of each side, alternated")
    return report


if __name__ == "__main__":
    main(__doc__, add_args, run)
