"""The durable-state port: small async interfaces named after what the service and engine do.

``Store`` is all of them at once, and what both implementations satisfy (``lowtide.store.sqlite``
and ``lowtide.store.postgres``, chosen from the URL by ``open_store``); a caller that needs one
use case only may name its part: ``FileStore``, ``BatchStore`` (the control plane),
``ValidationWork``, ``DispatchWork`` and ``FinalizationWork`` (the engine), ``AccountStore``
(rate limits, API keys, idempotency keys), ``RetentionStore``, ``BackendStatusStore`` and
``ControlStore`` (the batch controls).

Every method that commits a request's result is fenced by the lease epoch, so a worker whose
lease was taken over can never overwrite the newer owner's result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from lowtide.domain.accounts import ApiKeyRecord, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.backends import BackendReport
from lowtide.domain.controls import FailedRequest, ResultMarks
from lowtide.domain.offload import Chunk, ChunkLine, Offloaded
from lowtide.domain.pace import PaceRow
from lowtide.domain.records import BatchFilter, BatchRecord, FileRecord, JsonDict, Pricing
from lowtide.domain.status import Status
from lowtide.domain.validation import RequestLine
from lowtide.domain.work import ActiveBatch, Claim, Outcome, ResultRow
from lowtide.store.budgets import Grant


class Lifecycle(Protocol):
    """Opening, closing and waking: what every process does with its store."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""

    async def notify(self) -> None:
        """Tell engines in other processes that a batch was created or cancelled."""

    async def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever another process notifies (no-op for a one-process store)."""


class FileStore(Protocol):
    """Files: uploads, results, and what a deleted input leaves behind."""

    async def create_file(
        self, record: FileRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        """Insert the file; with ``idempotency``, record the key in the same transaction.

        If the key is already recorded (and has not lapsed), nothing is inserted and the
        recorded key is returned instead; None means the file was created.
        """

    async def get_file(self, account: str | None, file_id: str) -> FileRecord | None:
        """A live file of ``account`` (any account when None)."""

    async def list_files(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> list[FileRecord]: ...

    async def delete_file(self, account: str, file_id: str) -> FileRecord | None:
        """Forget the file and queue its bytes for deletion (``blobs_to_delete``), in one
        transaction; returns it. The account's batches still validating keep it as their
        input (``kept_input``)."""

    async def kept_input(self, batch_id: str) -> tuple[str, str] | None:
        """(purpose, blob key) of the batch's input file if that file was deleted while the
        batch was validating (its bytes stay until no live batch reads them)."""

    async def file_usage(self, account: str) -> tuple[int, int]:
        """(number of files, bytes stored) of an account."""


class BatchStore(Protocol):
    """Batches as the API sees them: create, read, list, cancel; gauges."""

    async def create_batch(
        self, record: BatchRecord, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyRecord | None:
        """Insert the batch; ``idempotency`` as for ``create_file``."""

    async def get_batch(self, account: str | None, batch_id: str) -> BatchRecord | None: ...

    async def list_batches(
        self, account: str | None, flt: BatchFilter, *, after: str | None, limit: int
    ) -> list[BatchRecord]:
        """Newest first; ``after`` is a batch id, items older than it."""

    async def count_live_batches(self, account: str, endpoint: str) -> int: ...

    async def request_cancel(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        """Move a validating / in_progress batch to cancelling; return the batch as it is now."""

    async def status_summary(self) -> tuple[dict[str, int], int]:
        """Batches by status, and request lines of live batches without a result yet."""


class ValidationWork(Protocol):
    """The engine's first step: lease a new batch, check its input, start it."""

    async def claim_validation(self, owner: str, now: float, lease: float) -> BatchRecord | None:
        """Lease one batch in ``validating`` whose lease is free or expired."""

    async def finish_validation(
        self,
        batch_id: str,
        owner: str,
        requests: Sequence[RequestLine],
        model: str,
        pricing: Pricing,
        now: int,
    ) -> bool:
        """Store the request rows and move the batch to in_progress (False if it moved on)."""

    async def fail_validation(
        self, batch_id: str, owner: str, errors: list[JsonDict], now: int
    ) -> bool: ...


class DispatchWork(Protocol):
    """The engine's hot path: claim requests, commit their outcomes, keep leases."""

    async def active_batches(self) -> list[ActiveBatch]:
        """Batches in progress and not paused, in serving order (``lowtide.domain.priority``:
        urgent ones earliest deadline first, then by priority)."""

    async def claim_requests(
        self, batch_id: str, owner: str, limit: int, now: float, lease: float
    ) -> list[Claim]: ...

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: int) -> list[str]:
        """Commit a group of outcomes in one transaction, each fenced by its epoch.

        Returns the ids of batches whose every request now has a result.
        """

    async def heartbeat(self, owner: str, lease_until: float) -> None: ...

    async def release_leases(self, owner: str | None) -> int:
        """Put leased requests back to pending (``owner`` None: every lease, at start-up)."""

    async def reclaim_expired_leases(self, now: float) -> int: ...

    async def next_retry_at(self) -> float | None:
        """The earliest ``not_before`` of a pending request waiting for a retry."""

    async def acquire_slots(
        self,
        backend: str,
        owner: str,
        want: int,
        limit: int,
        now: float,
        lease: float,
        in_use: int = 0,
    ) -> int:
        """Hold up to ``want`` of the ``limit`` concurrency slots of a backend, fleet-wide,
        shared fairly with the other workers that want them (``lowtide.store.slots``).

        Returns how many slots ``owner`` may use now (leased until ``now + lease``); slots held
        beyond that are given back, except the ``in_use`` ones still running requests. This is
        how ``max_concurrency`` holds across workers.
        """

    async def claim_budget(
        self,
        backend: str,
        owner: str,
        settle: tuple[int, int, int] | None,
        want_requests: int,
        want_tokens: int,
        need_tokens: int,
        rpm: int,
        tpm: int,
        now: float,
        window: float,
        until: float,
    ) -> Grant:
        """A slice of a backend's rpm/tpm budget, shared by the fleet (``lowtide.store.budgets``).

        First records what ``owner`` used of its last slice (``settle``: its id, requests and
        tokens used), giving the rest back. Then, unless ``want_requests`` is 0, grants up to
        ``want_requests`` requests and ``want_tokens`` tokens to be sent until ``until``, if the
        slices of the last ``window`` seconds leave room for one request of ``need_tokens``
        under ``rpm`` and ``tpm`` (0: no limit); else nothing, and when to ask again.
        """


class FinalizationWork(Protocol):
    """The engine's last step: expire, lease and finish batches, read results."""

    async def expire_due(self, now: int) -> list[str]:
        """Move batches past ``expires_at`` to finalizing (ending expired)."""

    async def batches_to_finalize(self, now: float) -> list[str]:
        """Batches ready to write results: all done, or stopping with nothing in flight."""

    async def claim_finalization(
        self, batch_id: str, owner: str, now: float, lease: float
    ) -> BatchRecord | None:
        """Lease the batch for finalisation; moves a finished in_progress batch to finalizing."""

    async def release_batch(self, batch_id: str, owner: str) -> None:
        """Give up the validation or finalisation lease of a batch (after a failure), so it
        is tried again at once rather than when the lease would have run out."""

    def iter_results(self, batch_id: str, after: int = 0) -> AsyncIterator[list[ResultRow]]:
        """Every request of the batch after line ``after`` in line order, in chunks."""

    async def finish_finalization(
        self,
        batch_id: str,
        owner: str,
        status: Status,
        files: Sequence[FileRecord],
        unrun_code: str | None,
        unrun_message: str | None,
        now: int,
    ) -> bool:
        """Publish the result files and the terminal status in one transaction."""


class AccountStore(Protocol):
    """Per-account rate limits, API keys and idempotency keys."""

    async def rate_limit_hit(self, key: str, window: int, now: float) -> int:
        """Count one request of ``key`` in the minute ``window``; return the window's count."""

    async def create_api_key(self, record: ApiKeyRecord, digest: bytes) -> None:
        """Store a key by the SHA-256 ``digest`` of its secret (never the secret itself)."""

    async def find_api_key(self, digest: bytes) -> str | None:
        """The account of the key with this digest, unless it is unknown or revoked."""

    async def has_api_keys(self) -> bool:
        """True once any key was created (revoked ones count: keys stay required)."""

    async def list_api_keys(self, account: str | None) -> list[ApiKeyRecord]:
        """Keys of ``account`` (every account when None), oldest first."""

    async def revoke_api_key(self, key_id: str, now: int) -> ApiKeyRecord | None:
        """Revoke a key (a key revoked before keeps its first ``revoked_at``); None if unknown."""

    async def find_idempotency(
        self, account: str, kind: str, key: str, since: int
    ) -> IdempotencyRecord | None:
        """The key as recorded at or after ``since``, if it was."""

    async def forget_idempotency(self, before: int) -> int:
        """Delete keys recorded before ``before``; returns how many."""


class RetentionStore(Protocol):
    """Forgetting what is past retention, and the blobs it leaves."""

    async def expire_files(self, now: int, limit: int) -> int:
        """Forget up to ``limit`` files past their ``expires_at`` and queue their bytes for
        deletion, in one transaction; returns how many."""

    async def blobs_to_delete(self, limit: int) -> list[str]:
        """Queued blob keys whose file no live batch reads any more (a deleted input file
        stays readable by its running batch until that batch ends)."""

    async def forget_blob_deletions(self, blob_keys: Sequence[str]) -> None:
        """The blobs are gone: take them off the queue (and forget the inputs they kept)."""

    async def retire_batches(self, created_before: int, limit: int) -> int:
        """Delete the request rows of up to ``limit`` terminal batches created before
        ``created_before`` (past retention: no one can see them any more); returns how many
        batches. The batch rows stay, for usage records."""


class BackendStatusStore(Protocol):
    """What each engine sees of its backends, for the API of every process to show."""

    async def report_backends(self, reports: Sequence[BackendReport], now: float) -> None:
        """Record an engine's views (each replaces that engine's earlier view of the backend),
        and forget views that nobody refreshed for ``STALE_AFTER`` seconds."""

    async def forget_backends(self, owner: str, now: float) -> None:
        """Forget an engine's views (it stops), and the stale ones of engines that died."""

    async def backend_reports(self, now: float) -> list[BackendReport]:
        """Every engine's views refreshed in the last ``STALE_AFTER`` seconds."""


class OffloadStore(Protocol):
    """Chunks of requests offloaded to hosted Batch APIs (``lowtide.engine.offload``)."""

    async def offload_candidates(
        self, batch_id: str, now: float, max_length: int, limit: int, *, last: bool
    ) -> list[tuple[int, int]]:
        """(line, length) of up to ``limit`` pending requests no longer than ``max_length``,
        in claim order (``last``: from the other end)."""

    async def offload_oversized(
        self, batch_id: str, now: float, max_length: int, limit: int
    ) -> list[int]:
        """Lines of pending requests longer than ``max_length``."""

    async def take_lines(
        self,
        batch_id: str,
        holder: str,
        lease_until: float,
        lines: Sequence[int],
        chunk: Chunk | None = None,
    ) -> list[tuple[int, int, str, int]]:
        """Lease those of ``lines`` still pending to ``holder`` until ``lease_until``; with
        ``chunk`` (whose ``lines`` is set to how many were taken), insert it and its lines in
        the same transaction, unless none was taken. Returns (line, lease epoch, custom_id,
        attempts) of each, in line order."""

    async def chunk_lines(self, chunk_id: str) -> list[ChunkLine]:
        """The requests the chunk holds, or held when it last recorded outcomes."""

    async def save_chunk(self, chunk: Chunk) -> bool:
        """Write what a step changed; False if the chunk's lease is no longer ``chunk``'s."""

    async def claim_chunks(self, owner: str, now: float, lease: float, limit: int) -> list[Chunk]:
        """Lease unfinished chunks whose lease ran out (their worker stopped or died)."""

    async def renew_chunks(self, owner: str, lease_until: float) -> None: ...

    async def release_chunks(self, owner: str | None) -> int:
        """Let the chunks of ``owner`` (of everyone when None: at start-up, alone) be taken
        over at once."""

    async def chunk_results(self, chunk_id: str) -> list[tuple[int, bool]]:
        """(line, succeeded) of the chunk's lines whose result came from it."""

    async def finish_chunk(self, chunk: Chunk) -> bool:
        """Save the chunk (its final counts) and forget its lines, in one transaction."""

    async def offload_shares(self, batch_ids: Sequence[str]) -> dict[str, tuple[Offloaded, int]]:
        """Per batch that has chunks: what each batch backend did, and the lines its open
        chunks recorded so far."""

    async def chunks_of(self, batch_id: str) -> list[Chunk]: ...


class ControlStore(Protocol):
    """The batch controls (``lowtide.domain.controls``): pause, resume and stop a batch, read
    its results so far and the lines that failed, retry them as a new batch, and the pace of
    a model's backends."""

    async def pause_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        """Pause an in_progress batch of ``account`` (a paused one keeps its ``paused_at``);
        return the batch as it is now, paused or not (None: no such batch)."""

    async def resume_batch(self, account: str, batch_id: str, now: int) -> BatchRecord | None:
        """Resume a paused in_progress batch of ``account``, its pace counted afresh from
        ``now``; return the batch as it is now (resumed, or as it was)."""

    async def stop_batch(self, batch_id: str, reason: str, now: int) -> bool:
        """Stop a validating or in_progress batch like a cancel, with ``reason`` as its
        ``stop_reason``; False if it was past that."""

    async def result_marks(self, batch_id: str, after: int) -> ResultMarks:
        """Where the batch's results stand after line ``after``."""

    def failed_requests(self, batch_id: str) -> AsyncIterator[list[FailedRequest]]:
        """The requests of the batch that ended in error, in line order, in chunks."""

    async def create_retry(
        self, file: FileRecord, batch: BatchRecord, idempotency: IdempotencyClaim | None
    ) -> IdempotencyRecord | None:
        """Insert the new input file and the new batch in one transaction (with the key, as
        ``create_batch``); if the key is held already, insert nothing and return it."""

    async def model_paces(self, model: str, since: int) -> list[PaceRow]:
        """The pace marks of the model's batches that ended lines at or after ``since``."""


class Store(
    Lifecycle,
    FileStore,
    BatchStore,
    ValidationWork,
    DispatchWork,
    FinalizationWork,
    AccountStore,
    RetentionStore,
    BackendStatusStore,
    OffloadStore,
    ControlStore,
    Protocol,
):
    """Everything the service and the engine keep: what both stores implement."""
