"""The sections of the settings other than backends and models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lowtide.settings.base import Strict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("lowtide-data")
    #: ``sqlite:///path`` (default: ``<data_dir>/lowtide.db``) or ``postgresql://...``.
    database_url: str | None = None
    #: ``file:///path`` (default: ``<data_dir>/files``) or ``s3://bucket/prefix``.
    storage_url: str | None = None
    #: Time zone in which ``create_after`` / ``create_before`` list filters are read.
    timezone: str = "UTC"
    log_level: str = "INFO"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'lowtide.db'}"

    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'files').resolve()}"


class ApiKeySettings(Strict):
    key: str = Field(min_length=8)
    account: str = Field(default="default", min_length=1, max_length=64)
    #: An operator's key: may also list and read every account's batches (read-only).
    admin: bool = False


class BillingSettings(Strict):
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    currency: str = "USD"


class EngineSettings(Strict):
    #: Attempts per request before a retryable failure goes to the error file.
    max_attempts: int = Field(default=5, ge=1, le=100)
    #: First retry delay in seconds; doubled each attempt (full jitter) up to ``retry_max_delay``.
    retry_base_delay: float = Field(default=0.5, ge=0)
    retry_max_delay: float = Field(default=30.0, ge=0)
    #: Seconds a claimed request stays leased without a heartbeat.
    lease_seconds: float = Field(default=60.0, gt=0)
    #: Results are committed every ``commit_interval`` seconds or ``commit_batch`` results.
    commit_interval: float = Field(default=0.05, gt=0)
    commit_batch: int = Field(default=200, ge=1)
    #: Idle poll interval: the safety net behind the in-process wake-ups.
    poll_interval: float = Field(default=1.0, gt=0)
    #: Seconds of a backend outage (requests in a row with no answer) during which failed
    #: attempts are not counted against their lines: they wait for the backend instead.
    outage_grace: float = Field(default=120.0, ge=0)
    #: Seconds to let in-flight requests finish on SIGTERM before they are released.
    shutdown_grace: float = Field(default=8.0, ge=0)
    #: Seconds between two health probes (``GET /models``) of a backend that is up...
    probe_interval: float = Field(default=10.0, gt=0)
    #: ... and of one that is down: how soon a backend that is back is used again.
    probe_interval_down: float = Field(default=1.0, gt=0)
    #: Record in each result line the request body as it was sent (``sent_body``).
    record_sent_body: bool = False


class LimitSettings(Strict):
    max_file_bytes: int = Field(default=500 * 1024 * 1024, ge=1)
    max_lines: int = Field(default=50_000, ge=1)
    max_line_bytes: int = Field(default=6 * 1024 * 1024, ge=1)
    #: Live (non-terminal) batches of the test model per account.
    test_batches_per_account: int = Field(default=2, ge=1)


class S3Settings(Strict):
    """An S3-compatible store for ``storage_url = "s3://bucket/prefix"``.

    A key left unset falls back to the usual AWS environment variables (``AWS_ENDPOINT_URL``,
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``)
    and the rest of boto3's credential chain (profiles, instance roles).
    """

    #: e.g. ``http://127.0.0.1:9000`` for MinIO; unset means AWS S3.
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = Field(default=None, repr=False)
    #: ``path`` (bucket in the path; most self-hosted stores), ``virtual`` or ``auto``.
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: Multipart part size in bytes: the memory one blob being written holds. S3 requires
    #: at least 5 MiB and at most 5 GiB; a blob has at most 10,000 parts.
    part_size: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024, le=5 * 1024**3)

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both s3.access_key_id and s3.secret_access_key, or neither")
        return self


class AccountLimits(Strict):
    """Quotas and API rate limits of an account (defaults: the hosted products' limits)."""

    #: Files an account may keep (uploads and results).
    max_files: int = Field(default=10_000, ge=1)
    #: Bytes an account may keep.
    max_bytes: int = Field(default=100 * 1024**3, ge=1)
    #: Requests per minute, by route class.
    create_per_minute: int = Field(default=1_000, ge=1)
    retrieve_per_minute: int = Field(default=1_000, ge=1)
    list_per_minute: int = Field(default=100, ge=1)
    cancel_per_minute: int = Field(default=1_000, ge=1)
    upload_per_minute: int = Field(default=180, ge=1)


class AccountOverrides(Strict):
    """Per-account changes to ``[account_defaults]``; unset keys keep the default."""

    max_files: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1)
    create_per_minute: int | None = Field(default=None, ge=1)
    retrieve_per_minute: int | None = Field(default=None, ge=1)
    list_per_minute: int | None = Field(default=None, ge=1)
    cancel_per_minute: int | None = Field(default=None, ge=1)
    upload_per_minute: int | None = Field(default=None, ge=1)


class MetricsSettings(Strict):
    #: Report the gauges read from the shared database (batches by status, lines pending).
    #: In a fleet, turn this on in one process only, so that summing over processes counts
    #: each batch once.
    store_gauges: bool = True


class CallbackSettings(Strict):
    #: Hosts that ``metadata.ds_batch_finish_callback`` may point at; none by default, so that
    #: callbacks cannot be used to reach internal addresses.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Seconds to wait for the callback's answer.
    timeout: float = Field(default=10.0, gt=0)


# --- retention ------------------------------------------------------------------------------


class RetentionSettings(Strict):
    """How long batches stay visible, and how often the sweeper deletes what has expired."""

    #: Batches created more than this many days ago are neither listed nor retrievable, and
    #: their per-request rows are deleted (the batch row stays, for usage records).
    batch_days: int = Field(default=30, ge=1, le=36_500)
    #: Seconds between two sweeps (expired files, bytes of deleted files, lapsed keys).
    sweep_interval_seconds: float = Field(default=60.0, gt=0)


class SchedulingSettings(Strict):
    """The order in which a batch's requests are sent."""

    #: Send lines that share a prompt prefix together, the longest first within a group, and
    #: keep a group on one backend while it has room (``lowtide.domain.prefix``): engines with
    #: a prefix cache compute each shared prefix about once. Off: file order. Applies to the
    #: batches validated after it is set.
    prefix_order: bool = True


class TestingSettings(Strict):
    """Knobs that only tests may turn; refused outside ``LOWTIDE_TESTING=1``."""

    #: Overrides every batch's completion window, in seconds (to test expiry quickly).
    completion_window_seconds: float | None = None
    #: Length of a rate-limit window in seconds instead of a minute (to test recovery); also
    #: the window of the backends' rpm and tpm budgets.
    rate_limit_window_seconds: float | None = Field(default=None, gt=0)
    #: How long an upstream batch's window is taken to be, in seconds, instead of its
    #: ``completion_window`` (to test offload and spill-over against short deadlines).
    offload_window_seconds: float | None = Field(default=None, gt=0)
