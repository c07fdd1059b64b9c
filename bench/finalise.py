"""finalise: lowtide's finaliser (``lowtide.engine.finalizer.finalize``) writing the output and
error files of a batch of 50,000 results of about 1 KB each (one in ten an error), against
writing the same bytes with one sequential write (and one fsync: the finaliser fsyncs too).

The store is a real SQLite file and the blobs a real local directory, filled through the
store's own methods (validation, claims and group commits) with synthetic results; no server
is started.

    .venv/bin/python bench/finalise.py [--requests 50000] [--body-bytes 1000] [--tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from common import ENDPOINT, MODEL, Report, Row, fsync_path, main, mb_s, secs

from lowtide.blobs import BlobStore, open_blobs
from lowtide.domain import ids
from lowtide.domain.records import BatchRecord, FileRecord, Pricing
from lowtide.domain.status import Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import FAILED, SUCCEEDED, Claim, Outcome
from lowtide.engine.finalizer import finalize
from lowtide.settings import RetentionSettings
from lowtide.store import Store, open_store, rows

OWNER = "bench-finalise"
LEASE = 600.0
#: How long result files are kept: the default of ``retention.batch_days``.
RETENTION = RetentionSettings().batch_days * 86400
ERROR_EVERY = 10  # one result in ten goes to the error file


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--body-bytes", type=int, default=1_000, help="size of each answer body")
    p.add_argument("--repeat", type=int, default=2, help="batches finalised; the best counts")


def answer(line: int, size: int) -> bytes:
    """A chat completion body of about ``size`` bytes, as a backend would send it."""
    head = (
        f'{{"id":"chatcmpl-{line:012d}","object":"chat.completion","created":1760000000,'
        f'"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"'
    )
    tail = (
        '"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":25,'
        '"completion_tokens":180,"total_tokens":205}}'
    )
    words = f"Line {line} says the quarter went well and costs fell. "
    room = max(0, size - len(head) - len(tail))
    return (head + (words * (room // len(words) + 1))[:room] + tail).encode()


def outcome(claim: Claim, body_bytes: int) -> Outcome:
    if claim.line % ERROR_EVERY == 0:
        return Outcome(
            claim.batch_id,
            claim.line,
            claim.epoch,
            FAILED,
            status_code=400,
            request_id=f"req_{claim.line:024d}",
            body=b'{"error":{"message":"Bad request.","type":"invalid_request_error"}}',
            error_code="invalid_request_error",
            error_message="Bad request.",
            attempts=1,
            custom_id=claim.custom_id,
        )
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        SUCCEEDED,
        status_code=200,
        request_id=f"req_{claim.line:024d}",
        body=answer(claim.line, body_bytes),
        input_tokens=25,
        output_tokens=180,
        attempts=1,
        custom_id=claim.custom_id,
    )


async def prepare(store: Store, n: int, body_bytes: int) -> str:
    """A batch of ``n`` requests, every one with its result committed: ready to finalise."""
    now = int(time.time())
    file_id, batch_id = ids.new_input_file_id(), ids.new_batch_id()
    key = rows.input_blob_key(file_id)
    await store.create_file(FileRecord(file_id, "bench", "batch", "in.jsonl", 0, now, key))
    await store.create_batch(
        BatchRecord(batch_id, "bench", ENDPOINT, file_id, "24h", now, now + 86_400)
    )
    claimed = await store.claim_validation(OWNER, time.time(), LEASE)
    assert claimed is not None and claimed.id == batch_id
    lines = [RequestLine(i, f"req-{i:07d}", 0, 1) for i in range(1, n + 1)]
    await store.finish_validation(batch_id, OWNER, lines, MODEL, Pricing(), now)
    while claims := await store.claim_requests(batch_id, OWNER, 512, time.time(), LEASE):
        await store.record_outcomes([outcome(c, body_bytes) for c in claims], now)
    return batch_id


async def finalise_once(store: Store, blobs: BlobStore, n: int, body_bytes: int) -> float:
    batch_id = await prepare(store, n, body_bytes)
    t0 = time.perf_counter()
    status = await finalize(store, blobs, batch_id, OWNER, LEASE, retention=RETENTION)
    seconds = time.perf_counter() - t0
    if status is not Status.COMPLETED:
        raise SystemExit(f"finalisation ended {status}")
    return seconds


def written_bytes(blob_root: Path) -> bytes:
    """Every result file the finalisers wrote, one after the other (order does not matter)."""
    return b"".join(
        p.read_bytes() for p in sorted((blob_root / "results").rglob("*")) if p.is_file()
    )


def one_write(data: bytes, path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    path.unlink()
    return seconds


async def finalise_all(workdir: Path, n: int, body_bytes: int, repeat: int) -> list[float]:
    store = open_store(f"sqlite:///{workdir / 'lowtide.db'}")
    blobs = open_blobs(f"file://{workdir / 'files'}")
    await store.open()
    await blobs.open()
    try:
        return [await finalise_once(store, blobs, n, body_bytes) for _ in range(repeat)]
    finally:
        await blobs.close()
        await store.close()


def run(args: argparse.Namespace, workdir: Path) -> Report:
    n = 500 if args.tiny else args.requests
    repeat = 1 if args.tiny else args.repeat
    times = asyncio.run(finalise_all(workdir, n, args.body_bytes, repeat))
    data = written_bytes(workdir / "files")
    size = len(data) // repeat  # each batch wrote the same bytes
    baseline = min(one_write(data[:size], workdir / "one-write.bin") for _ in range(3))
    fsync_path(workdir)
    mine = min(times)
    report = Report()
    report.add(
        Row(
            "finalise",
            f"output + error files, {n:,} results, {size / 1e6:,.0f} MB",
            f"{secs(mine)} ({mb_s(size, mine)})",
            f"{secs(baseline)} ({mb_s(size, baseline)}, one write)",
            mine / baseline,
            "≤ 3×",
            mine / baseline <= 3,
        )
    )
    report.note(f"finalise: best of {repeat} batches; the one write is the best of 3")
    return report


if __name__ == "__main__":
    main(__doc__, add_args, run)
