"""``lowtide run``: run a batch file through the configured backends, with no server.

It is the server's own engine on a private state directory beside the output
(``OUT.lowtide-state/``: the SQLite database and the file blobs), so validation, retries,
concurrency ceilings and line formats are the server's. The first run stores the input and
creates one batch; a run after a crash or Ctrl-C finds that batch and starts the engine again,
which releases the leases of the previous run: no recorded line is lost or sent again. Once
the batch is terminal, its result files are copied to OUT and ERR and the state is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console

from lowtide import errors
from lowtide.cli.atomic import atomic_file
from lowtide.cli.client import endpoint_of
from lowtide.cli.progress import (
    EXIT_INTERRUPTED,
    TERMINAL,
    BatchProgress,
    Counts,
    errors_path_for,
    exit_code,
    stderr_console,
)
from lowtide.domain.records import BatchFilter, BatchRecord
from lowtide.domain.status import Status
from lowtide.settings import Settings, load_settings

__all__ = ["run_command", "state_dir_for"]

ACCOUNT: Final = "default"
_STATE_FILE: Final = "run.json"
_POLL_SECONDS: Final = 0.25
_CHUNK: Final = 1 << 20


def state_dir_for(output: Path) -> Path:
    return output.with_name(output.name + ".lowtide-state")


@click.command("run")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the output file (2xx lines).",
)
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the error file (default: OUT's name with .errors.jsonl).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="LOWTIDE_CONFIG",
    help="TOML config with the backends [env LOWTIDE_CONFIG]; without it only the test "
    "model batch-test-model works.",
)
@click.option(
    "--endpoint", help="Endpoint of the batch (default: the url of the file's first line)."
)
@click.option(
    "--window",
    default="336h",
    show_default=True,
    help="Completion window; lines not run by then end in the error file as expired.",
)
@click.option("--keep-state", is_flag=True, help="Keep OUT.lowtide-state/ after the run ends.")
@click.option("--log-level", default="WARNING", show_default=True, help="Engine log level.")
def run_command(
    file: Path,
    output: Path,
    errors_path: Path | None,
    config_path: Path | None,
    endpoint: str | None,
    window: str,
    keep_state: bool,
    log_level: str,
) -> None:
    """Run a batch file locally, with no server.

    The state lives in OUT.lowtide-state/ until the batch ends. Stopped by Ctrl-C or a crash,
    the same command run again resumes: every line ends up exactly once in OUT or ERR.
    Exits with 0 when the batch completed (some lines may have failed: see ERR), 3 when
    the file failed validation, 4 when the window expired, 130 when interrupted.

    \b
    Examples:
      lowtide run batch.jsonl -o output.jsonl --config lowtide.toml
      lowtide run batch.jsonl -o output.jsonl --errors errors.jsonl --config lowtide.toml
      lowtide run test.jsonl -o out.jsonl     # the test model, no backend needed
    """
    console = stderr_console()
    _setup_logging(log_level, console)
    state = state_dir_for(output)
    try:
        settings = load_settings(
            config_path,
            data_dir=state,
            database_url=f"sqlite:///{state / 'lowtide.db'}",
            storage_url=f"file://{(state / 'files').resolve()}",
        )
        job = Job(file, output, errors_path or errors_path_for(output), state, settings, console)
        code = asyncio.run(job.run(endpoint or endpoint_of(file), window))
    except errors.LowtideError as exc:
        raise click.ClickException(exc.message) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from exc
    if code == exit_code("failed") or (code != EXIT_INTERRUPTED and not keep_state):
        # A file that failed validation is fixed and run afresh, so its state goes too.
        shutil.rmtree(state, ignore_errors=True)
    if code:
        raise click.exceptions.Exit(code)


def _setup_logging(level: str, console: Console) -> None:
    from rich.logging import RichHandler

    # Through the progress bar's console, so that log lines print above the bar, not into it.
    handler = RichHandler(console=console, show_path=False, markup=False)
    logging.basicConfig(level=level.upper(), handlers=[handler], format="%(name)s: %(message)s")


# --------------------------------------------------------------------------- the run


@dataclass
class Job:
    input: Path
    output: Path
    error_file: Path
    state: Path
    settings: Settings
    console: Console
    #: Set by Ctrl-C (SIGINT) or SIGTERM.
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, endpoint: str, window: str) -> int:
        self.state.mkdir(parents=True, exist_ok=True)
        with _locked(self.state):
            await self._check_input()
            return await self._run(endpoint, window)

    async def _run(self, endpoint: str, window: str) -> int:
        async with _offline(self.settings) as offline:
            batch = await offline.find_batch() or await offline.create_batch(
                self.input, endpoint, window
            )
            self._record({"batch_id": batch.id})
            if batch.completed + batch.failed:
                done = batch.completed + batch.failed
                self._note(f"resuming {batch.id}: {done} of {batch.total} lines already done")
            self._catch_signals()
            await offline.start_engine()
            final = await self._follow(offline, batch.id)
            if final is None:
                return await self._interrupted(offline)
            await offline.stop_engine()
            return await self._finish(offline, final)

    # -- the input and the state file

    async def _check_input(self) -> None:
        """A state directory belongs to one input: resuming it with another would mix them."""
        digest = await asyncio.to_thread(_sha256, self.input)
        recorded = self._read_state().get("sha256")
        if recorded is not None and recorded != digest:
            raise click.ClickException(
                f"{self.state} holds a run of a different input file; "
                f"delete it to start over with {self.input}"
            )
        self._record({"input": str(self.input.resolve()), "sha256": digest})

    def _read_state(self) -> dict[str, Any]:
        path = self.state / _STATE_FILE
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def _record(self, changes: dict[str, Any]) -> None:
        state = {**self._read_state(), **changes}
        with atomic_file(self.state / _STATE_FILE) as handle:
            handle.write(json.dumps(state, indent=2).encode() + b"\n")

    # -- following the batch

    async def _follow(self, offline: _Offline, batch_id: str) -> BatchRecord | None:
        """Show progress until the batch is terminal (returned) or Ctrl-C (None)."""
        with BatchProgress(self.input.name, self.console) as progress:
            while True:
                batch = await offline.get(batch_id)
                progress.update(_counts(batch))
                if batch.status in TERMINAL:
                    return batch
                try:
                    await asyncio.wait_for(self.stop.wait(), _POLL_SECONDS)
                    return None
                except TimeoutError:
                    pass

    def _catch_signals(self) -> None:
        loop = asyncio.get_running_loop()

        def first() -> None:
            self.stop.set()
            # A second Ctrl-C stops at once: that is a crash, which the state survives too.
            for other in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(other)
                signal.signal(other, signal.SIG_DFL)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, first)

    async def _interrupted(self, offline: _Offline) -> int:
        grace = self.settings.engine.shutdown_grace
        self._note(f"stopping: letting requests in flight finish (up to {grace:g} s)...")
        await offline.stop_engine()
        self._note(
            "stopped. Run the same command again to resume; "
            f"finished lines are kept in {self.state}"
        )
        return EXIT_INTERRUPTED

    # -- the end

    async def _finish(self, offline: _Offline, batch: BatchRecord) -> int:
        if batch.status == Status.FAILED:
            self._note(f"{self.input} failed validation:")
            for error in batch.errors or []:
                line = f"line {error.get('line')}: " if error.get("line") else ""
                self._note(f"  {line}{error.get('code')}: {error.get('message')}")
        else:
            # Both files, the error file empty when no line failed: the next step finds them.
            await offline.copy_file(batch.output_file_id, self.output)
            await offline.copy_file(batch.error_file_id, self.error_file)
            self._note(
                f"wrote {batch.completed} line(s) to {self.output} "
                f"and {batch.failed} error line(s) to {self.error_file}"
            )
        return exit_code(batch.status.value)

    def _note(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """One run at a time on a state directory: two engines on it would send lines twice."""
    with (state / "lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"another `lowtide run` is using {state}") from None
        yield  # the lock goes with the file handle, also when the process is killed


def _counts(batch: BatchRecord) -> Counts:
    return Counts(batch.status.value, batch.completed, batch.failed, batch.total)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- composition


@dataclass
class _LocalUpload:
    """A local file in the shape ``FileService.upload`` reads an HTTP upload."""

    path: Path
    chunks: AsyncIterator[bytes] = field(init=False)
    fields: dict[str, str] = field(default_factory=lambda: {"purpose": "batch"})
    filename: str | None = None
    has_file: bool = True

    def __post_init__(self) -> None:
        self.filename = self.path.name
        self.chunks = _read_chunks(self.path)


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        handle.close()


class _Offline:
    """The server's parts without the API: store, blobs, backends and engine, on the state dir."""

    def __init__(self, settings: Settings) -> None:
        from lowtide.blobs import open_blobs
        from lowtide.engine.engine import Engine
        from lowtide.server import build_router
        from lowtide.store import open_store

        self.settings = settings
        self.store = open_store(settings.server.resolved_database_url())
        self.blobs = open_blobs(settings.server.resolved_storage_url(), settings.s3)
        self.router = build_router(settings)
        # exclusive: this process is the only engine on the state, so the leases a killed
        # run left behind are released at once instead of after they time out.
        self.engine = Engine(settings, self.store, self.blobs, self.router, exclusive=True)
        self.engine_running = False

    async def find_batch(self) -> BatchRecord | None:
        found = await self.store.list_batches(ACCOUNT, BatchFilter(), after=None, limit=1)
        return found[0] if found else None

    async def create_batch(self, path: Path, endpoint: str, window: str) -> BatchRecord:
        from lowtide.service.batches import BatchService
        from lowtide.service.files import FileService

        upload = await FileService(self.settings, self.store, self.blobs).upload(
            ACCOUNT, _LocalUpload(path)
        )
        params = {"input_file_id": upload.id, "endpoint": endpoint, "completion_window": window}
        batches = BatchService(self.settings, self.store, self.engine.wake)
        return await batches.create(ACCOUNT, params)

    async def get(self, batch_id: str) -> BatchRecord:
        batch = await self.store.get_batch(ACCOUNT, batch_id)
        if batch is None:
            raise errors.NotFound(f"batch {batch_id} vanished from the state directory")
        return batch

    async def copy_file(self, file_id: str | None, path: Path) -> None:
        record = await self.store.get_file(ACCOUNT, file_id) if file_id else None
        with atomic_file(path) as out:
            if record is not None:
                async for chunk in self.blobs.stream(record.blob_key):
                    out.write(chunk)

    async def start_engine(self) -> None:
        await self.engine.start()
        self.engine_running = True

    async def stop_engine(self) -> None:
        """Let requests in flight finish (bounded), commit, release the leases."""
        if self.engine_running:
            self.engine_running = False
            await self.engine.stop()

    async def close(self) -> None:
        await self.stop_engine()
        for backend in self.router.backends():
            await backend.close()
        await self.blobs.close()
        await self.store.close()


@contextlib.asynccontextmanager
async def _offline(settings: Settings) -> AsyncIterator[_Offline]:
    offline = _Offline(settings)
    await offline.store.open()
    try:
        await offline.blobs.open()
        yield offline
    finally:
        await offline.close()
