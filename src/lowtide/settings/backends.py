"""The ``[[backends]]`` and ``[models."name"]`` sections: where lines are sent, and how."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lowtide.domain.offload import PRESETS, UpstreamLimits, window_hours
from lowtide.settings.base import Strict
from lowtide.settings.body import BodyFields

#: How a backend wants request bodies written (``lowtide.backends.dialects``).
Dialect = Literal["openai", "vllm", "sglang", "dashscope", "ollama", "llamacpp"]


class BackendSettings(Strict):
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


class ModelSettings(Strict):
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
