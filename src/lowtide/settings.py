"""The one settings object, read from a TOML file and the environment at start-up.

Never built at import time: ``load_settings()`` is called by the CLI (the composition root).
Every key is documented in ``docs/configuration.md``; a test checks that the two agree.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from lowtide import errors
from lowtide.domain.offload import PRESETS, UpstreamLimits, window_hours

CONFIG_ENV = "LOWTIDE_CONFIG"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class _Strict(BaseModel):
    # Unknown keys are refused so that a typo in the config file is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
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


#: How a backend wants request bodies written (``lowtide.backends.dialects``).
Dialect = Literal["openai", "vllm", "sglang", "dashscope", "ollama", "llamacpp"]

#: Keys of ``defaults`` / ``overrides`` that the batch line itself decides.
_LINE_ONLY = frozenset({"model", "stream"})
#: The thinking switch has one spelling in the config; each dialect writes it its own way.
_OTHER_SWITCHES = {
    "think": "enable_thinking",
    "chat_template_kwargs.enable_thinking": "enable_thinking",
    "thinking_token_budget": "thinking_budget",
}
#: The output-token limit, whichever name the endpoint gives it; and the least value of each.
_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_INT_KEYS = {**dict.fromkeys(_LIMITS, 1), "thinking_budget": 0}


def _body_fields(value: dict[str, Any]) -> dict[str, Any]:
    """Check a ``defaults`` / ``overrides`` table: JSON values, and the keys lowtide reads
    itself with the types it needs."""
    for key, item in value.items():
        if key in _LINE_ONLY:
            raise ValueError(f"{key!r} cannot be set here: the batch line decides it")
        _json_only(key, item)
    nested = value.get("chat_template_kwargs")
    spelled = set(value) | (
        {f"chat_template_kwargs.{k}" for k in nested} if isinstance(nested, dict) else set()
    )
    for other, name in _OTHER_SWITCHES.items():
        if other in spelled:
            raise ValueError(f"write {other!r} as {name!r}: each dialect spells it its own way")
    limits = [k for k in _LIMITS if k in value]
    if len(limits) > 1:
        raise ValueError(f"{' and '.join(limits)} are one limit: give one of them")
    for key, least in _INT_KEYS.items():
        if key in value and (type(value[key]) is not int or value[key] < least):
            raise ValueError(f"{key} must be a whole number of tokens, at least {least}")
    if "enable_thinking" in value and not isinstance(value["enable_thinking"], bool):
        raise ValueError("enable_thinking must be true or false")
    if "reasoning_effort" in value and not isinstance(value["reasoning_effort"], str):
        raise ValueError("reasoning_effort must be a string")
    return value


def _json_only(key: str, item: Any) -> None:
    if isinstance(item, dict):
        for inner, nested in item.items():
            _json_only(f"{key}.{inner}", nested)
    elif isinstance(item, list):
        for nested in item:
            _json_only(key, nested)
    elif not isinstance(item, str | int | float | bool):
        raise ValueError(f"{key}: a request body holds JSON values, not {type(item).__name__}")


#: Request body fields, as in a batch line's ``body`` (checked by ``_body_fields``).
BodyFields = Annotated[dict[str, Any], AfterValidator(_body_fields)]


class ApiKeySettings(_Strict):
    key: str = Field(min_length=8)
    account: str = Field(default="default", min_length=1, max_length=64)
    #: An operator's key: may also list and read every account's batches (read-only).
    admin: bool = False


class BackendSettings(_Strict):
    name: str = Field(min_length=1)
    base_url: str
    api_key: str | None = None
    #: Name of an environment variable holding the key (so it stays out of the file).
    api_key_env: str | None = None
    models: list[str] = Field(min_length=1)
    #: Batch model name -> the name this backend knows it by.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    max_concurrency: int = Field(default=16, ge=1, le=10_000)
    #: Seconds to wait for one answer before the attempt counts as a timeout.
    timeout: float = Field(default=600.0, gt=0)
    #: ``fixed``: always ``max_concurrency`` in flight. ``adaptive``: ``max_concurrency`` is a
    #: ceiling, and the limit under it follows the engine's metrics or latency
    #: (lowtide.engine.limits; docs/scheduling.md, "Adaptive concurrency").
    concurrency: Literal["fixed", "adaptive"] = "fixed"
    #: The engine's Prometheus page (vLLM, SGLang) for the adaptive limit. Unset: ``base_url``
    #: with its trailing ``/v1`` replaced by ``/metrics``; ``""``: none (latency only).
    metrics_url: str | None = None
    #: Adaptive: running slots of the engine kept free for traffic that is not lowtide's.
    reserve: int = Field(default=4, ge=0, le=10_000)
    #: Requests and tokens (prompt + max_tokens) per minute the backend allows; 0: no limit.
    #: lowtide paces its sends under them, fleet-wide (docs/scheduling.md, "Budgets").
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    #: How request bodies are translated for this server (docs/backends.md).
    dialect: Dialect = "openai"
    #: Body fields set when a line lacks them, and fields always set (``max_tokens``: a cap).
    defaults: BodyFields = Field(default_factory=dict)
    overrides: BodyFields = Field(default_factory=dict)
    #: ``http``: a server that answers one request at a time; ``batch``: a hosted Batch API
    #: that lines are offloaded to in chunks (docs/offload.md). The keys below are for it.
    kind: Literal["http", "batch"] = "http"
    #: The upstream's published limits (lines and bytes per file, bytes per line, windows).
    limits: Literal["openai", "dashscope"] = "openai"
    #: Seconds between two polls of an upstream batch.
    poll_interval: float = Field(default=60.0, gt=0)
    #: At most this many lines, bytes and bytes per line in one upstream file (the preset's
    #: limits when unset; never more than them).
    max_lines_per_chunk: int | None = Field(default=None, ge=1)
    max_chunk_bytes: int | None = Field(default=None, ge=1024)
    max_line_bytes: int | None = Field(default=None, ge=1024)
    #: The window asked of the upstream (the preset's shortest when unset).
    completion_window: str | None = None
    #: Offload only the lines that the HTTP backends will not finish in time.
    spill: bool = False
    #: Offloaded lines cost this times the batch price of their tokens.
    price_factor: float = Field(default=1.0, ge=0)
    #: Delete the upstream input, output and error files once their results are recorded.
    delete_files: bool = True
    #: Seconds between the end of an upstream batch's window and the lowtide batch's deadline;
    #: also how early before the deadline the HTTP backends should be done when spilling.
    deadline_margin: float = Field(default=1800.0, ge=0)

    @field_validator("metrics_url")
    @classmethod
    def _http_metrics_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError('metrics_url must be an http:// or https:// URL, or "" for none')
        return value

    def resolved_api_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return self.api_key

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> BackendSettings:
        given = self.model_fields_set
        if self.kind == "http":
            wrong = sorted(given & _BATCH_ONLY)
            if wrong:
                raise ValueError(f'{", ".join(wrong)}: only a backend of kind = "batch" takes this')
            return self
        wrong = sorted(given & _HTTP_ONLY)
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)}: a batch backend takes no such key (the upstream decides "
                "how many of its lines run at once, and how fast)"
            )
        self._check_limits()
        return self

    def _check_limits(self) -> None:
        preset = PRESETS[self.limits]
        for key, value, most in (
            ("max_lines_per_chunk", self.max_lines_per_chunk, preset.max_lines),
            ("max_chunk_bytes", self.max_chunk_bytes, preset.max_file_bytes),
            ("max_line_bytes", self.max_line_bytes, preset.max_line_bytes),
        ):
            if value is not None and value > most:
                raise ValueError(f"{key} = {value}: over the {self.limits} limit of {most}")
        if self.completion_window is not None:
            try:
                hours = window_hours(self.completion_window)
            except ValueError as exc:
                raise ValueError(f"completion_window: {exc}") from None
            if not preset.min_window_hours <= hours <= preset.max_window_hours:
                raise ValueError(
                    f"completion_window = {self.completion_window!r}: {self.limits} accepts "
                    + _window_range(preset.min_window_hours, preset.max_window_hours)
                )

    def upstream_limits(self) -> UpstreamLimits:
        """The preset's limits, lowered where this backend's keys say so."""
        preset = PRESETS[self.limits]
        return UpstreamLimits(
            self.max_lines_per_chunk or preset.max_lines,
            self.max_chunk_bytes or preset.max_file_bytes,
            self.max_line_bytes or preset.max_line_bytes,
            preset.min_window_hours,
            preset.max_window_hours,
        )

    def window(self) -> str:
        """The completion window asked of the upstream."""
        return self.completion_window or f"{PRESETS[self.limits].min_window_hours}h"


def _window_range(least: int, most: int) -> str:
    return f"only {least}h" if least == most else f"{least}h to {most}h"


#: Keys that only one kind of backend takes (``BackendSettings._keys_of_its_kind``).
_BATCH_ONLY = frozenset(
    {
        "limits",
        "poll_interval",
        "max_lines_per_chunk",
        "max_chunk_bytes",
        "max_line_bytes",
        "completion_window",
        "spill",
        "price_factor",
        "delete_files",
        "deadline_margin",
    }
)
_HTTP_ONLY = frozenset({"max_concurrency", "concurrency", "metrics_url", "reserve", "rpm", "tpm"})


class ModelSettings(_Strict):
    #: Real-time price per 1M input tokens.
    input_price: float = Field(default=0.0, ge=0)
    #: Real-time price per 1M output tokens (reasoning tokens too).
    output_price: float = Field(default=0.0, ge=0)
    currency: str = "USD"
    #: What a chat line without a thinking switch does: ``on``, ``off``, or ``backend`` (the
    #: backend's own default).
    thinking: Literal["on", "off", "backend"] = "backend"
    #: Body fields set when a line lacks them, and fields always set (``max_tokens``: a cap).
    defaults: BodyFields = Field(default_factory=dict)
    overrides: BodyFields = Field(default_factory=dict)

    @model_validator(mode="after")
    def _thinking_said_once(self) -> ModelSettings:
        if self.thinking != "backend" and "enable_thinking" in self.defaults:
            raise ValueError("set thinking or defaults.enable_thinking, not both")
        return self


class BillingSettings(_Strict):
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    currency: str = "USD"


class EngineSettings(_Strict):
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


class LimitSettings(_Strict):
    max_file_bytes: int = Field(default=500 * 1024 * 1024, ge=1)
    max_lines: int = Field(default=50_000, ge=1)
    max_line_bytes: int = Field(default=6 * 1024 * 1024, ge=1)
    #: Live (non-terminal) batches of the test model per account.
    test_batches_per_account: int = Field(default=2, ge=1)


class S3Settings(_Strict):
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


class AccountLimits(_Strict):
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


class AccountOverrides(_Strict):
    """Per-account changes to ``[account_defaults]``; unset keys keep the default."""

    max_files: int | None = Field(default=None, ge=1)
    max_bytes: int | None = Field(default=None, ge=1)
    create_per_minute: int | None = Field(default=None, ge=1)
    retrieve_per_minute: int | None = Field(default=None, ge=1)
    list_per_minute: int | None = Field(default=None, ge=1)
    cancel_per_minute: int | None = Field(default=None, ge=1)
    upload_per_minute: int | None = Field(default=None, ge=1)


class MetricsSettings(_Strict):
    #: Report the gauges read from the shared database (batches by status, lines pending).
    #: In a fleet, turn this on in one process only, so that summing over processes counts
    #: each batch once.
    store_gauges: bool = True


class CallbackSettings(_Strict):
    #: Hosts that ``metadata.ds_batch_finish_callback`` may point at; none by default, so that
    #: callbacks cannot be used to reach internal addresses.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Seconds to wait for the callback's answer.
    timeout: float = Field(default=10.0, gt=0)


# --- retention ------------------------------------------------------------------------------


class RetentionSettings(_Strict):
    """How long batches stay visible, and how often the sweeper deletes what has expired."""

    #: Batches created more than this many days ago are neither listed nor retrievable, and
    #: their per-request rows are deleted (the batch row stays, for usage records).
    batch_days: int = Field(default=30, ge=1, le=36_500)
    #: Seconds between two sweeps (expired files, bytes of deleted files, lapsed keys).
    sweep_interval_seconds: float = Field(default=60.0, gt=0)


class SchedulingSettings(_Strict):
    """The order in which a batch's requests are sent."""

    #: Send lines that share a prompt prefix together, the longest first within a group, and
    #: keep a group on one backend while it has room (``lowtide.domain.prefix``): engines with
    #: a prefix cache compute each shared prefix about once. Off: file order. Applies to the
    #: batches validated after it is set.
    prefix_order: bool = True


class TestingSettings(_Strict):
    """Knobs that only tests may turn; refused outside ``LOWTIDE_TESTING=1``."""

    #: Overrides every batch's completion window, in seconds (to test expiry quickly).
    completion_window_seconds: float | None = None
    #: Length of a rate-limit window in seconds instead of a minute (to test recovery); also
    #: the window of the backends' rpm and tpm budgets.
    rate_limit_window_seconds: float | None = Field(default=None, gt=0)
    #: How long an upstream batch's window is taken to be, in seconds, instead of its
    #: ``completion_window`` (to test offload and spill-over against short deadlines).
    offload_window_seconds: float | None = Field(default=None, gt=0)


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    backends: list[BackendSettings] = Field(default_factory=list)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    billing: BillingSettings = BillingSettings()
    engine: EngineSettings = EngineSettings()
    limits: LimitSettings = LimitSettings()
    callbacks: CallbackSettings = CallbackSettings()
    metrics: MetricsSettings = MetricsSettings()
    account_defaults: AccountLimits = AccountLimits()
    accounts: dict[str, AccountOverrides] = Field(default_factory=dict)
    s3: S3Settings = S3Settings()
    retention: RetentionSettings = RetentionSettings()
    scheduling: SchedulingSettings = SchedulingSettings()
    testing: TestingSettings = TestingSettings()

    @field_validator("backends")
    @classmethod
    def _unique_backend_names(cls, value: list[BackendSettings]) -> list[BackendSettings]:
        names = [b.name for b in value]
        if len(names) != len(set(names)):
            raise ValueError("backend names must be unique")
        return value

    @model_validator(mode="after")
    def _testing_only_in_tests(self) -> Settings:
        if self.testing != TestingSettings() and os.environ.get("LOWTIDE_TESTING") != "1":
            raise ValueError("[testing] settings need LOWTIDE_TESTING=1 in the environment")
        return self

    def served_models(self) -> set[str]:
        return {model for backend in self.backends for model in backend.models}

    def http_backends(self) -> list[BackendSettings]:
        """The backends sent one request at a time (kind ``http``)."""
        return [b for b in self.backends if b.kind == "http"]

    def batch_backends(self) -> list[BackendSettings]:
        """The hosted Batch APIs that lines are offloaded to (kind ``batch``)."""
        return [b for b in self.backends if b.kind == "batch"]

    def keys_required(self) -> bool:
        return bool(self.api_keys)

    def limits_for(self, account: str) -> AccountLimits:
        override = self.accounts.get(account)
        if override is None:
            return self.account_defaults
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        return self.account_defaults.model_copy(update=changes)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (``path``, else ``$LOWTIDE_CONFIG``, else none) and apply overrides.

    ``overrides`` are ``server`` keys given on the command line (host, port, data_dir).
    """
    path = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    raw: dict[str, Any] = _read_toml(path) if path else {}
    server = dict(raw.get("server", {}))
    server.update({k: v for k, v in overrides.items() if v is not None})
    raw["server"] = server
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "\n".join(f"  {problem}" for problem in describe_errors(exc, raw))
        raise errors.ConfigError(f"invalid configuration{where}:\n{problems}") from exc


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One line per problem, in the file's own terms: the section as it is written in TOML
    (``[[backends]] "gpu-1"``, not ``backends.0``), the key, what is wrong, and for an unknown
    key the nearest known one."""
    return [_describe(error, raw) for error in exc.errors(include_url=False)]


def _describe(error: ErrorDetails, raw: dict[str, Any]) -> str:
    loc = error["loc"]
    section, model, rest = _section_of(loc, raw)
    where = " ".join(part for part in (section, ".".join(map(str, rest))) if part) or "config"
    if error["type"] == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(rest[-1]) if rest else "", known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key; {hint}"
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{where}: {error['msg']}{shown}"


def _section_of(
    loc: tuple[int | str, ...], raw: dict[str, Any]
) -> tuple[str, type[BaseModel] | None, tuple[int | str, ...]]:
    """``(how the section is written in TOML, its settings model, the rest of loc)``."""
    if not loc:
        return "", Settings, ()
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    if field is None:  # an unknown top-level section or key
        return "", Settings, loc
    model = _model_in(field.annotation)
    if typing.get_origin(field.annotation) is list and len(loc) > 1 and isinstance(loc[1], int):
        entry = (raw.get(name) or [None] * (loc[1] + 1))[loc[1]]
        label = entry.get("name") if isinstance(entry, dict) else None
        which = f'"{label}"' if isinstance(label, str) else f"#{loc[1] + 1}"
        return f"[[{name}]] {which}", model, loc[2:]
    if typing.get_origin(field.annotation) is dict and len(loc) > 1:
        return f'[{name}."{loc[1]}"]', model, loc[2:]
    return f"[{name}]", model, loc[1:]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model of a section: ``Section``, ``list[Section]`` or ``dict[str, Section]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise errors.ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
