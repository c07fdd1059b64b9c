"""Prometheus metrics of this process.

Counters and per-process gauges count only this process's own work, so in the scale-out mode
the fleet's totals are the sum over processes with nothing counted twice. Gauges read from the
shared database (batches by status, lines pending) are the same in every process that reports
them: they are reported only where ``metrics.store_gauges`` is on (see docs/configuration.md).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_BACKEND = ("backend", "model")

DISPATCHED = Counter(
    "lowtide_requests_dispatched", "Attempts sent to a backend.", _BACKEND, registry=REGISTRY
)
SUCCEEDED = Counter(
    "lowtide_requests_succeeded", "Requests answered with a 2xx.", _BACKEND, registry=REGISTRY
)
FAILED = Counter(
    "lowtide_requests_failed",
    "Requests that ended in the error file after their last attempt.",
    (*_BACKEND, "status_class"),
    registry=REGISTRY,
)
RETRIED = Counter(
    "lowtide_requests_retried",
    "Attempts that failed and will be tried again.",
    (*_BACKEND, "status_class"),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "lowtide_upstream_rate_limited", "429 answers from a backend.", ("backend",), registry=REGISTRY
)
PAUSES = Counter(
    "lowtide_backend_pauses",
    "Pauses of a backend ordered by Retry-After.",
    ("backend",),
    registry=REGISTRY,
)
PAUSE_SECONDS = Counter(
    "lowtide_backend_pause_seconds",
    "Seconds of Retry-After pauses ordered by a backend.",
    ("backend",),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "lowtide_upstream_latency_seconds",
    "Time from sending a request to a backend to its answer.",
    _BACKEND,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
TOKENS = Counter(
    "lowtide_tokens",
    "Tokens of succeeded (billed) requests.",
    ("model", "direction"),
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "lowtide_requests_in_flight",
    "Requests this process has in flight to a backend.",
    ("backend",),
    registry=REGISTRY,
)
CONCURRENCY_LIMIT = Gauge(
    "lowtide_backend_concurrency_limit",
    "Requests this process may have in flight to a backend now: max_concurrency, or the "
    "adaptive limit under it, and in a fleet no more than this process's share.",
    ("backend",),
    registry=REGISTRY,
)
LIMIT_SOURCE = Gauge(
    "lowtide_backend_limit_source",
    "1 for where a backend's concurrency limit comes from now: fixed (max_concurrency), "
    "metrics (the engine's own /metrics) or latency.",
    ("backend", "source"),
    registry=REGISTRY,
)
ENGINE_CAPACITY = Gauge(
    "lowtide_backend_engine_capacity",
    "Sequences the engine runs at once, as learned from its metrics (0: not known yet).",
    ("backend",),
    registry=REGISTRY,
)
ENGINE_REQUESTS = Gauge(
    "lowtide_backend_engine_requests",
    "Requests the engine reported running or waiting at the last scrape of its /metrics "
    "(everyone's, not only lowtide's).",
    ("backend", "state"),
    registry=REGISTRY,
)
ENGINE_SCRAPES = Counter(
    "lowtide_backend_engine_scrapes",
    "Scrapes of an engine's /metrics, by result (ok or failed).",
    ("backend", "result"),
    registry=REGISTRY,
)
CONCURRENCY_CUTS = Counter(
    "lowtide_backend_concurrency_cuts",
    "Times a 429, 503 or timeout halved a backend's adaptive concurrency limit.",
    ("backend",),
    registry=REGISTRY,
)
BUDGET_WAIT_SECONDS = Counter(
    "lowtide_backend_budget_wait_seconds",
    "Seconds requests waited for a backend's rpm/tpm budget before they were sent.",
    ("backend",),
    registry=REGISTRY,
)
BUDGET_USED = Gauge(
    "lowtide_backend_budget_used",
    "Requests and tokens this process counts against a backend's rpm and tpm in the "
    "current rolling minute (in a fleet: what it holds of the shared budget).",
    ("backend", "kind"),
    registry=REGISTRY,
)
TOKENS_PER_BYTE = Gauge(
    "lowtide_backend_tokens_per_byte",
    "Prompt tokens per byte of prompt text, as calibrated for a backend's budget estimates.",
    ("backend",),
    registry=REGISTRY,
)
INPUT_READ_FAILURES = Counter(
    "lowtide_input_read_failures",
    "Request lines that could not be read from their input file (the object store failed).",
    registry=REGISTRY,
)
BACKEND_UP = Gauge(
    "lowtide_backend_up",
    "1 while a backend answers, 0 while it is down (as this process sees it).",
    ("backend",),
    registry=REGISTRY,
)
VALIDATION_SECONDS = Histogram(
    "lowtide_validation_seconds",
    "Time to validate an input file.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
FINALIZATION_SECONDS = Histogram(
    "lowtide_finalization_seconds",
    "Time to write a batch's result files.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
BATCHES_FINISHED = Counter(
    "lowtide_batches_finished",
    "Batches this process brought to a terminal status.",
    ("status",),
    registry=REGISTRY,
)
BATCHES_CREATED = Counter(
    "lowtide_batches_created", "Batches created through this process.", registry=REGISTRY
)
BATCHES = Gauge(
    "lowtide_batches",
    "Batches by status in the shared database (store gauge).",
    ("status",),
    registry=REGISTRY,
)
LINES_PENDING = Gauge(
    "lowtide_lines_pending",
    "Request lines of live batches without a result yet (store gauge).",
    registry=REGISTRY,
)


def status_class(status: int | None) -> str:
    """``2xx``/``4xx``/``5xx``, or ``none`` for a request that got no answer."""
    return f"{status // 100}xx" if status else "none"
