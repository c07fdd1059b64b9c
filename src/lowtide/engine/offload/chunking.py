"""Which pending lines make a chunk, and the upstream input file built from them.

A chunk holds at most the upstream's lines per file, and its lines' stored lengths (each plus
``LINE_SLACK``, what a line may grow by on its way) at most its bytes per file; a line longer
than the upstream's bytes per line never goes upstream. The file is the chunk's lines in line
order, each written the way the backend reads it (model alias, defaults, overrides, dialect:
``lowtide.backends.shaping``), with the line number as its ``custom_id``: the user's ids never
leave lowtide, and the answers map back to lines without a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

import orjson

from lowtide import errors
from lowtide.backends.shaping import Plan
from lowtide.blobs import BlobStore
from lowtide.domain.offload import LINE_SLACK, ChunkLine, UpstreamLimits

#: Lines of the input file read together when they lie this close (one read per run of them:
#: a chunk of a whole file is a handful of reads, not one per line).
_READ_GAP = 64 * 1024
_READ_SPAN = 8 * 1024 * 1024


class TooLarge(errors.BackendError):
    """The chunk's lines grew past the upstream's limit on their way (more than the room kept
    for them): it cannot be sent as it is."""


def longest_line(limits: UpstreamLimits) -> int:
    """The longest stored line that may go upstream."""
    return limits.max_line_bytes - LINE_SLACK


def fit(candidates: Sequence[tuple[int, int]], limits: UpstreamLimits, want: int) -> list[int]:
    """The lines, from the front of ``candidates`` ((line, length) pairs), that one chunk of
    at most ``want`` lines takes within ``limits``."""
    taken: list[int] = []
    size = 0
    for line, length in candidates:
        if len(taken) >= min(want, limits.max_lines):
            break
        if size + length + LINE_SLACK > limits.max_file_bytes:
            break
        taken.append(line)
        size += length + LINE_SLACK
    return taken


async def build_file(
    blobs: BlobStore,
    input_key: str,
    lines: Sequence[ChunkLine],
    plan: Plan,
    endpoint: str,
    limits: UpstreamLimits,
    out: BinaryIO,
) -> int:
    """Write the upstream input file of a chunk's ``lines`` (read from the batch's input file)
    to ``out``, in line order; its size. Lines lie in the input file in line order, so reading
    by offset writes them in order, a run at a time: memory holds one run, not the file."""
    size = 0
    for run in _runs(sorted(lines, key=lambda c: c.offset)):
        start = run[0].offset
        data = await blobs.read_range(input_key, start, run[-1].offset + run[-1].length - start)
        for item in run:
            raw = data[item.offset - start : item.offset - start + item.length]
            size += out.write(_upstream_line(raw, item.line, plan, endpoint))
        if size > limits.max_file_bytes:
            raise TooLarge(f"the chunk's file is over the upstream's {limits.max_file_bytes} bytes")
    return size


def _upstream_line(raw: bytes, line: int, plan: Plan, endpoint: str) -> bytes:
    request = orjson.loads(raw)
    body = request["body"]
    if body.get("model") != plan.model:
        body["model"] = plan.model  # the upstream may know the model by another name
    plan.shape(body)
    record = {"custom_id": str(line), "method": "POST", "url": endpoint, "body": body}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _runs(lines: list[ChunkLine]) -> list[list[ChunkLine]]:
    """Lines (sorted by offset) in runs read at once: close together, not too long."""
    runs: list[list[ChunkLine]] = []
    for item in lines:
        if runs:
            run = runs[-1]
            end = run[-1].offset + run[-1].length
            span = item.offset + item.length - run[0].offset
            if item.offset - end <= _READ_GAP and span <= _READ_SPAN:
                run.append(item)
                continue
        runs.append([item])
    return runs
