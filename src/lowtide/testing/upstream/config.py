"""The fake upstream's configuration: what it answers and which faults it injects.

Every field of ``UpstreamConfig`` is also a command-line flag (``--rate-429``) and a key of
``POST /_fake/config``; the help text beside each field is the flag's help.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from lowtide.testing import serving

DOWN_MODES: Final = ("close", "503")

T = TypeVar("T")


def _opt(default: T, help_text: str) -> T:
    # The help text lives beside the field so the CLI flags cannot drift from the dataclass.
    return field(default=default, metadata={"help": help_text})


def _opt_list(factory: Callable[[], T], help_text: str) -> T:
    return field(default_factory=factory, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """What the fake upstream does; every field is also a CLI flag and a /_fake/config key."""

    latency: float = _opt(0.0, "mean seconds to wait before answering")
    jitter: float = _opt(0.0, "uniform +/- seconds added to latency")
    error_rate: float = _opt(0.0, "fraction of requests answered with one of error_statuses")
    error_statuses: tuple[int, ...] = _opt_list(lambda: (500, 502, 503), "statuses for error_rate")
    rate_429: float = _opt(0.0, "fraction of requests answered 429 with Retry-After")
    retry_after: float = _opt(1.0, "seconds announced in Retry-After / retry-after-ms")
    early_grace_ms: float = _opt(
        25.0, "requests arriving this soon after a 429 was sent were in flight, not early"
    )
    storm_seconds: float = _opt(0.0, "answer every request 429 for this long from now")
    storm_until: float = _opt(0.0, "answer every request 429 until this epoch time")
    drop_rate: float = _opt(0.0, "fraction of connections closed without an answer")
    hang_rate: float = _opt(0.0, "fraction of requests that never answer")
    hang_seconds: float = _opt(3600.0, "how long a hanging request waits before dropping")
    garbage_rate: float = _opt(0.0, "fraction answered 200 with a truncated or non-JSON body")
    down_seconds: float = _opt(0.0, "be down for this long from now")
    down_until: float = _opt(0.0, "be down until this epoch time")
    down_mode: str = _opt("close", "while down: 'close' the connection at once or answer '503'")
    fail_contains: str = _opt("FAIL400", "content marker answered 400 context_length_exceeded")
    fail_once_contains: str = _opt("FAIL500ONCE", "content marker whose first attempt gets 500")
    slow_contains: str = _opt("SLOW", "content marker that adds slow_seconds of latency")
    slow_seconds: float = _opt(1.0, "extra latency for the slow marker")
    hang_contains: str = _opt("HANGFOREVER", "content marker whose requests never answer")
    drop_contains: str = _opt("DROPCONN", "content marker whose connections are dropped")
    completion_tokens: int = _opt(16, "completion tokens per answer, capped by max_tokens")
    reasoning_tokens: int = _opt(0, "reasoning tokens reported (part of completion_tokens)")
    reasoning_field: str = _opt(
        "", "chat message field (reasoning_content, reasoning) holding the reasoning text"
    )
    record_bodies: int = _opt(0, "keep the last N request bodies for GET /_fake/bodies")
    models: tuple[str, ...] = _opt_list(lambda: ("fake-model",), "models listed by /v1/models")
    reject_unknown_models: bool = _opt(False, "answer 404 model_not_found for unlisted models")
    api_key: str | None = _opt(None, "if set, require 'Authorization: Bearer <api_key>'")
    seed: int | None = _opt(None, "seed of the random generator, for reproducible runs")

    def __post_init__(self) -> None:
        self.validate()

    def updated(self, changes: Mapping[str, object]) -> UpstreamConfig:
        """A copy with ``changes`` (JSON-typed values) applied; ValueError if any is bad."""
        return serving.replaced(self, changes, _COERCERS, field_hints(), "unknown config field")

    def validate(self) -> None:
        rates = (self.error_rate, self.rate_429, self.drop_rate, self.hang_rate, self.garbage_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError("every *_rate must be within [0, 1]")
        # The rates share one random draw, so past 1 the later faults would silently starve.
        if sum(rates) > 1.0 + 1e-9:
            raise ValueError("the *_rate fields must add up to at most 1")
        durations = (
            self.latency,
            self.jitter,
            self.retry_after,
            self.hang_seconds,
            self.slow_seconds,
            self.storm_seconds,
            self.down_seconds,
        )
        if any(d < 0 for d in durations):
            raise ValueError("durations must not be negative")
        if any(not 400 <= s <= 599 for s in self.error_statuses) or not self.error_statuses:
            raise ValueError("error_statuses must be 4xx/5xx statuses")
        if self.down_mode not in DOWN_MODES:
            raise ValueError(f"down_mode must be one of {DOWN_MODES}")
        if self.completion_tokens < 0 or self.reasoning_tokens < 0:
            raise ValueError("token counts must not be negative")
        if self.record_bodies < 0:
            raise ValueError("record_bodies must not be negative")

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so in-process stats equal the HTTP ones."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
        }


# ---------------------------------------------------------------- config value coercion


def _to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _to_int_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of integers")
    return tuple(serving.to_int(v) for v in value)


def _to_str_tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of strings")
    return tuple(serving.to_str(v) for v in value)


def _optional(inner: Callable[[object], T]) -> Callable[[object], T | None]:
    return lambda value: None if value is None else inner(value)


_COERCERS: Final[dict[object, Callable[[object], object]]] = {
    float: _to_float,
    int: serving.to_int,
    str: serving.to_str,
    bool: _to_bool,
    tuple[int, ...]: _to_int_tuple,
    tuple[str, ...]: _to_str_tuple,
    int | None: _optional(serving.to_int),
    str | None: _optional(serving.to_str),
}


def _bool_text(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _optional_text(inner: Callable[[str], object]) -> Callable[[str], object]:
    return lambda text: None if text.strip().lower() in ("", "none") else inner(text)


# CLI flags arrive as text; these turn them into the JSON-typed values `updated` expects.
FROM_TEXT: Final[dict[object, Callable[[str], object]]] = {
    float: float,
    int: int,
    str: str,
    bool: _bool_text,
    tuple[int, ...]: lambda text: [int(part) for part in _split(text)],
    tuple[str, ...]: _split,
    int | None: _optional_text(int),
    str | None: _optional_text(str),
}


def field_hints() -> dict[str, object]:
    return dict(typing.get_type_hints(UpstreamConfig))


def with_windows(config: UpstreamConfig, started: Sequence[str], now: float) -> UpstreamConfig:
    """Turn storm_seconds / down_seconds into absolute ``*_until`` times starting ``now``."""
    storm_until, down_until = config.storm_until, config.down_until
    if "storm_seconds" in started:
        storm_until = now + config.storm_seconds if config.storm_seconds > 0 else 0.0
    if "down_seconds" in started:
        down_until = now + config.down_seconds if config.down_seconds > 0 else 0.0
    return dataclasses.replace(config, storm_until=storm_until, down_until=down_until)


def require_loopback(host: str) -> None:
    serving.require_loopback(host, "the fake upstream only listens on loopback addresses")
