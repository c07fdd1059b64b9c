"""The fake hosted Batch API's objects and what it does with them: files, batches, idempotency
keys, the run of a batch (validating, in_progress, then its output and error files), and the
faults its config asks for.

Every line of a batch is answered the way the fake upstream (``lowtide.testing.upstream``)
would answer it as a request: the same bodies, the same usage; ``FAIL400`` in a line's content
makes a 400 error line, ``FAIL500`` a 500 one, ``FAIL500ONCE`` a 500 the first time the line
is run and an answer after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from lowtide.testing.upstream.config import UpstreamConfig
from lowtide.testing.upstream.routes import ROUTES, answer

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class BatchApiConfig:
    """What the fake does; every field is also a key of ``POST /_fake/config``. The counters
    (``fail_next``...) are spent one per batch (or call) they apply to."""

    #: Seconds a batch stays ``validating``, then ``in_progress`` before its lines are run.
    validation_seconds: float = 0.0
    run_seconds: float = 0.0
    #: The next N batches created fail validation (status ``failed``, no file).
    fail_next: int = 0
    #: The next N batches expire: ``expire_done`` of their lines (the first ones) are run.
    expire_next: int = 0
    expire_done: float = 0.5
    #: The next N batches complete with an output file that cannot be downloaded (404).
    lose_output_next: int = 0
    #: The next N creates answer 429 with ``Retry-After: retry_after``.
    rate_429_creates: int = 0
    retry_after: float = 0.5
    #: The next N creates make their batch, then drop the connection before answering.
    lose_create_answers: int = 0
    #: The next N uploads store their file, then drop the connection before answering.
    lose_upload_answers: int = 0
    #: On a cancel, this share of the lines not yet run is run first (partial results).
    cancel_done: float = 0.0
    #: Seconds an upload, a create or a file download waits before it is answered (the
    #: upload and create take effect first): windows for a test to kill its client in.
    hold_uploads: float = 0.0
    hold_creates: float = 0.0
    hold_contents: float = 0.0
    #: ``Idempotency-Key`` on creates: the same key answers the first batch (as lowtide does).
    honour_idempotency: bool = True
    #: Bearer key required (none: any).
    api_key: str = ""

    def updated(self, changes: dict[str, Any]) -> BatchApiConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass(slots=True)
class FakeBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    times: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    #: What this batch was set up to do (a fault taken from the config when it was created).
    fate: str = "complete"

    def to_api(self) -> dict[str, Any]:
        names = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling")
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86400,
            **{f"{name}_at": self.times.get(name) for name in names},
            "cancelled_at": self.times.get("cancelled"),
            "request_counts": dict(self.counts),
            "metadata": self.metadata or None,
        }


@dataclass(slots=True)
class Stats:
    uploads: int = 0
    creates: int = 0
    batches_created: int = 0
    create_429: int = 0
    lost_create_answers: int = 0
    lost_upload_answers: int = 0
    retrieves: int = 0
    lists: int = 0
    cancels: int = 0
    contents: int = 0
    deletes: int = 0
    lines_run: int = 0
    #: In flight now: for a test that kills its client in the middle of one.
    uploading: int = 0
    creating: int = 0
    downloading: int = 0
    #: Batches created per ``metadata.lowtide_chunk``: more than 1 is a chunk created twice.
    creates_by_chunk: Counter[str] = field(default_factory=Counter)
    #: Files stored per file name: more than 1 is an input file uploaded twice.
    uploads_by_name: Counter[str] = field(default_factory=Counter)
    #: Lines run per request key (the fake upstream's: the last user message).
    per_key: Counter[str] = field(default_factory=Counter)

    def to_api(self, per_key: bool, files: int = 0) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["files_stored"] = files
        out["creates_by_chunk"] = dict(self.creates_by_chunk)
        out["uploads_by_name"] = dict(self.uploads_by_name)
        out["per_key"] = dict(self.per_key) if per_key else None
        return out


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


class Objects:
    """Files and batches, and the tasks that run the batches."""

    def __init__(self, config: BatchApiConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self.keys: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: dict[str, asyncio.Event] = {}
        self._hurry: dict[str, asyncio.Event] = {}
        self._failed_once: set[str] = set()

    def take(self, name: str) -> bool:
        """Spend one of the config's counters ``name``; True if there was one."""
        left = getattr(self.config, name)
        if left <= 0:
            return False
        self.config = dataclasses.replace(self.config, **{name: left - 1})
        return True

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(new_id("file-"), filename, purpose, data, int(time.time()))
        self.files[stored.id] = stored
        return stored

    def create(
        self, input_file_id: str, endpoint: str, window: str, metadata: dict[str, str]
    ) -> FakeBatch:
        fate = "complete"
        for name, what in (
            ("fail_next", "fail"),
            ("expire_next", "expire"),
            ("lose_output_next", "lose_output"),
        ):
            if self.take(name):
                fate = what
                break
        batch = FakeBatch(
            new_id("batch_"), input_file_id, endpoint, window, metadata, int(time.time())
        )
        batch.fate = fate
        self.batches[batch.id] = batch
        self.stats.batches_created += 1
        if chunk := metadata.get("lowtide_chunk"):
            self.stats.creates_by_chunk[chunk] += 1
        self._cancelled[batch.id] = asyncio.Event()
        self._hurry[batch.id] = asyncio.Event()
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def cancel(self, batch: FakeBatch) -> None:
        if batch.status in ENDED or batch.status == "cancelling":
            return
        batch.status = "cancelling"
        batch.times["cancelling"] = int(time.time())
        self._cancelled[batch.id].set()

    def finish_now(self) -> None:
        """Every batch still waiting (validating or running) goes on at once, as if its
        ``validation_seconds`` and ``run_seconds`` had passed."""
        for event in self._hurry.values():
            event.set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- running a batch ---------------------------------------------------------------------

    async def _run(self, batch: FakeBatch) -> None:
        cancelled, hurry = self._cancelled[batch.id], self._hurry[batch.id]
        if await _wait(cancelled, hurry, self.config.validation_seconds):
            self._end(batch, self._lines(batch), "cancelled", self.config.cancel_done)
            return
        source = self.files.get(batch.input_file_id)
        if batch.fate == "fail" or source is None:
            batch.status, batch.times["failed"] = "failed", int(time.time())
            batch.errors = [
                {
                    "code": "invalid_file",
                    "message": "The input file could not be read.",
                    "param": None,
                    "line": None,
                }
            ]
            return
        lines = self._lines(batch)
        batch.counts["total"] = len(lines)
        batch.status, batch.times["in_progress"] = "in_progress", int(time.time())
        if await _wait(cancelled, hurry, self.config.run_seconds):
            self._end(batch, lines, "cancelled", self.config.cancel_done)
        elif batch.fate == "expire":
            self._end(batch, lines, "expired", self.config.expire_done)
        else:
            self._end(batch, lines, "completed", 1.0)

    def _lines(self, batch: FakeBatch) -> list[dict[str, Any]]:
        source = self.files.get(batch.input_file_id)
        if source is None:
            return []
        return [orjson.loads(raw) for raw in source.data.splitlines() if raw.strip()]

    def _end(
        self, batch: FakeBatch, lines: list[dict[str, Any]], status: str, share: float
    ) -> None:
        run = int(len(lines) * share)
        out: list[bytes] = []
        err: list[bytes] = []
        unrun_code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(status)
        for i, line in enumerate(lines):
            if i < run or unrun_code is None:
                status_code, result = self._answer(line)
                record = _result_line(batch.id, line, status_code, result)
                (out if status_code == 200 else err).append(record)
            else:
                err.append(_unrun_line(batch.id, line, unrun_code))
        batch.counts = {"total": len(lines), "completed": len(out), "failed": len(err)}
        now = int(time.time())
        if out:
            if batch.fate == "lose_output":
                batch.output_file_id = new_id("file-")  # never stored: a 404
            else:
                batch.output_file_id = self.add_file(
                    f"{batch.id}_output.jsonl", "batch_output", b"".join(out)
                ).id
        if err:
            batch.error_file_id = self.add_file(
                f"{batch.id}_error.jsonl", "batch_output", b"".join(err)
            ).id
        batch.times["finalizing"] = now
        batch.status, batch.times[status] = status, now

    def _answer(self, line: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = line.get("body") or {}
        route = ROUTES.get(str(line.get("url")))
        if route is None:
            return 404, _error("The url is not supported.", "invalid_request_error", None, None)
        key = route.key(body)
        self.stats.lines_run += 1
        self.stats.per_key[key] += 1
        if "FAIL400" in key:
            return 400, _error(_TOO_LONG, "invalid_request_error", route.required, _TOO_LONG_CODE)
        if "FAIL500ONCE" in key:
            if key not in self._failed_once:
                self._failed_once.add(key)
                return 500, _error(_SERVER_ERROR, "server_error", None, None)
        elif "FAIL500" in key:
            return 500, _error(_SERVER_ERROR, "server_error", None, None)
        return 200, route.build(body, answer(route, body, key, UpstreamConfig()))


# The fake upstream's words for the same faults (lowtide.testing.upstream.replies), so that a
# line answered here reads as the same line answered there.
_TOO_LONG = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in "
    "9000 tokens. Please reduce the length of the messages."
)
_TOO_LONG_CODE = "context_length_exceeded"
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def _error(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _result_line(batch_id: str, line: dict[str, Any], status: int, body: dict[str, Any]) -> bytes:
    error = None
    if status != 200:
        error = {
            "code": body["error"]["code"] or f"http_{status}",
            "message": body["error"]["message"],
        }
    record = {
        "id": new_id("batch_req_"),
        "custom_id": line.get("custom_id"),
        "response": {"status_code": status, "request_id": new_id("req_"), "body": body},
        "error": error,
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _unrun_line(batch_id: str, line: dict[str, Any], code: str) -> bytes:
    message = {
        "batch_expired": "This request could not be executed before the completion window expired.",
        "batch_cancelled": "This request was not executed because the batch was cancelled.",
    }[code]
    record = {
        "id": new_id("batch_req_"),
        "custom_id": line.get("custom_id"),
        "response": None,
        "error": {"code": code, "message": message},
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


async def _wait(cancelled: asyncio.Event, hurry: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``, unless ``cancelled`` or ``hurry`` is set first; True if cancelled."""
    if seconds > 0 and not (cancelled.is_set() or hurry.is_set()):
        waits = [asyncio.ensure_future(e.wait()) for e in (cancelled, hurry)]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
    else:
        await asyncio.sleep(0)
    return cancelled.is_set()
