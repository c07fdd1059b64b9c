"""A fast fake OpenAI-compatible model server with fault injection.

It answers ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses`` and ``GET /v1/models`` the way vLLM or OpenAI would, with bodies derived
deterministically from the request (the answer to a chat line is ``echo: <first 40 characters
of its last user message>``), and injects the faults that ``UpstreamConfig`` asks for:
latency, 5xx errors, 429s with ``Retry-After``, 429 storms, dropped connections, requests that
hang, garbage bodies, a backend that is down for a while, and per-line faults aimed by marker
strings in the content (``FAIL400``, ``FAIL500ONCE``, ``SLOW``, ...).

Latency is counted from the request's arrival (when aiohttp has parsed its headers; a batch
line's body comes in the same packets), not from when the handler gets round to it: an answer
with ``latency=L`` is sent L seconds after the request arrived, as a real backend with that
latency would send it, however long this server's own loop took to parse the request and reach
the handler. A server too busy to keep up answers as soon as it can. ``late_mean_ms`` and
``late_max_ms`` in the stats say how long after its due time a delayed answer's handler woke up
to send it (the loop's timers may also fire up to a millisecond early: negative lateness).

Control routes (never faulted, never counted): ``GET /_fake/stats[?per_key=1]``,
``GET|POST /_fake/config`` (a JSON object of config fields to change), ``POST /_fake/reset``.

In-process::

    async with FakeUpstream(UpstreamConfig(latency=0.01)) as up:
        ...  # point the client at up.url (or up.base_url, which ends in /v1)
        assert up.stats()["max_concurrency_seen"] <= 8

As a process (prints one ``LISTENING http://127.0.0.1:<port>`` line, then nothing)::

    python -m lowtide.testing.upstream --port 0 --rate-429 0.1 --retry-after 0.5

or ``with UpstreamProcess(config) as proc: proc.url``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import enum
import hashlib
import ipaddress
import math
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time
import typing
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

__all__ = ["DOWN_MODES", "FakeUpstream", "UpstreamConfig", "UpstreamProcess", "main"]

DOWN_MODES: Final = ("close", "503")
# Batch lines can carry long contexts or many embedding inputs; aiohttp's default is 1 MiB.
_MAX_BODY: Final = 64 * 1024 * 1024
_ECHO_CHARS: Final = 40
_EMBEDDING_DIMS: Final = 8
_JSON: Final = "application/json"
# aiohttp's default listen backlog is 128: a client that opens a few hundred connections at once
# (lowtide with max_concurrency 256) overflows it, and each dropped SYN is retried after 1 s.
_BACKLOG: Final = 1024
# Where _make_request stamps the request's arrival (time.monotonic()).
_ARRIVED: Final = web.RequestKey("lowtide_fake_arrived", float)

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
    models: tuple[str, ...] = _opt_list(lambda: ("fake-model",), "models listed by /v1/models")
    reject_unknown_models: bool = _opt(False, "answer 404 model_not_found for unlisted models")
    api_key: str | None = _opt(None, "if set, require 'Authorization: Bearer <api_key>'")
    seed: int | None = _opt(None, "seed of the random generator, for reproducible runs")

    def __post_init__(self) -> None:
        self.validate()

    def updated(self, changes: Mapping[str, object]) -> UpstreamConfig:
        """A copy with ``changes`` (JSON-typed values) applied; ValueError if any is bad."""
        hints = _field_hints()
        coerced: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in hints:
                raise ValueError(f"unknown config field {name!r}")
            try:
                coerced[name] = _COERCERS[hints[name]](value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: {exc}") from None
        return dataclasses.replace(self, **coerced)  # __post_init__ validates

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


def _to_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    return value


def _to_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _to_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _to_int_tuple(value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of integers")
    return tuple(_to_int(v) for v in value)


def _to_str_tuple(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of strings")
    return tuple(_to_str(v) for v in value)


def _optional(inner: Callable[[object], T]) -> Callable[[object], T | None]:
    return lambda value: None if value is None else inner(value)


_COERCERS: Final[dict[object, Callable[[object], object]]] = {
    float: _to_float,
    int: _to_int,
    str: _to_str,
    bool: _to_bool,
    tuple[int, ...]: _to_int_tuple,
    tuple[str, ...]: _to_str_tuple,
    int | None: _optional(_to_int),
    str | None: _optional(_to_str),
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
_FROM_TEXT: Final[dict[object, Callable[[str], object]]] = {
    float: float,
    int: int,
    str: str,
    bool: _bool_text,
    tuple[int, ...]: lambda text: [int(part) for part in _split(text)],
    tuple[str, ...]: _split,
    int | None: _optional_text(int),
    str | None: _optional_text(str),
}


def _field_hints() -> dict[str, object]:
    return dict(typing.get_type_hints(UpstreamConfig))


def _with_windows(config: UpstreamConfig, started: Sequence[str], now: float) -> UpstreamConfig:
    """Turn storm_seconds / down_seconds into absolute ``*_until`` times starting ``now``."""
    storm_until, down_until = config.storm_until, config.down_until
    if "storm_seconds" in started:
        storm_until = now + config.storm_seconds if config.storm_seconds > 0 else 0.0
    if "down_seconds" in started:
        down_until = now + config.down_seconds if config.down_seconds > 0 else 0.0
    return dataclasses.replace(config, storm_until=storm_until, down_until=down_until)


# ---------------------------------------------------------------- statistics


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    in_flight: int = 0
    max_concurrency_seen: int = 0
    ok: int = 0
    rate_limited: int = 0
    storm_rejected: int = 0
    errors_injected: int = 0
    fail_marker: int = 0
    fail_once: int = 0
    garbage: int = 0
    dropped: int = 0
    hung: int = 0
    down_rejected: int = 0
    unauthorized: int = 0
    bad_requests: int = 0
    client_disconnects: int = 0
    early_requests: int = 0
    early_same_key: int = 0
    early_max_ms: float = 0.0
    delayed: int = 0
    late_sum_ms: float = 0.0
    late_max_ms: float = 0.0
    by_route: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    per_key: Counter[str] = field(default_factory=Counter)

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("by_route", "by_status", "per_key", "late_sum_ms")
        }
        out["early_max_ms"] = round(self.early_max_ms, 3)
        out["late_mean_ms"] = round(self.late_sum_ms / max(1, self.delayed), 3)
        out["late_max_ms"] = round(self.late_max_ms, 3)
        out["by_route"] = dict(self.by_route)
        out["by_status"] = {str(status): n for status, n in sorted(self.by_status.items())}
        out["distinct_keys"] = len(self.per_key)
        return out


# ---------------------------------------------------------------- request reading


def _text(content: object) -> str:
    """Message content is a string or a list of parts; only the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _items(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("role") == "user":
            return _text(item.get("content"))
    return _text(items[-1].get("content")) if items else ""


def _chat_key(body: dict[str, Any]) -> str:
    return _last_user_text(_items(body.get("messages")))


def _chat_chars(body: dict[str, Any]) -> int:
    return sum(len(_text(m.get("content"))) for m in _items(body.get("messages")))


def _responses_key(body: dict[str, Any]) -> str:
    value = body.get("input")
    return value if isinstance(value, str) else _last_user_text(_items(value))


def _responses_chars(body: dict[str, Any]) -> int:
    value = body.get("input")
    chars = (
        len(value)
        if isinstance(value, str)
        else sum(len(_text(item.get("content"))) for item in _items(value))
    )
    instructions = body.get("instructions")
    return chars + (len(instructions) if isinstance(instructions, str) else 0)


def _texts(value: object) -> list[str]:
    """Prompts / embedding inputs: a string, strings, or token arrays (shown as JSON)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, int) for v in value):
        return [orjson.dumps(value).decode()]
    return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]


def _prompt_key(body: dict[str, Any]) -> str:
    return "\n".join(_texts(body.get("prompt")))


def _prompt_chars(body: dict[str, Any]) -> int:
    return sum(len(t) for t in _texts(body.get("prompt")))


def _input_key(body: dict[str, Any]) -> str:
    return "\n".join(_texts(body.get("input")))


def _input_chars(body: dict[str, Any]) -> int:
    return sum(len(t) for t in _texts(body.get("input")))


# ---------------------------------------------------------------- response bodies


@dataclass(frozen=True, slots=True)
class _Answer:
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


def _hex() -> str:
    return os.urandom(12).hex()


def _chat_usage(a: _Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": a.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_body(body: dict[str, Any], a: _Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": a.text,
        "refusal": None,
        "annotations": [],
    }
    return {
        "id": "chatcmpl-" + _hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _chat_usage(a),
        "service_tier": "default",
        "system_fingerprint": "fp_lowtide_fake",
    }


def _completion_body(body: dict[str, Any], a: _Answer) -> dict[str, Any]:
    return {
        "id": "cmpl-" + _hex(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [{"text": a.text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": _chat_usage(a),
        "system_fingerprint": "fp_lowtide_fake",
    }


def _responses_body(body: dict[str, Any], a: _Answer) -> dict[str, Any]:
    content = [{"type": "output_text", "text": a.text, "annotations": [], "logprobs": []}]
    message = {
        "type": "message",
        "id": "msg_" + _hex(),
        "status": "completed",
        "role": "assistant",
        "content": content,
    }
    return {
        "id": "resp_" + _hex(),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": a.model,
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": a.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": a.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": a.reasoning_tokens},
            "total_tokens": a.prompt_tokens + a.completion_tokens,
        },
        "metadata": body.get("metadata") or {},
    }


def _vector(text: str) -> list[float]:
    # A hash, not a model: the same input always gets the same vector, different ones differ.
    digest = hashlib.blake2b(text.encode(), digest_size=4 * _EMBEDDING_DIMS).digest()
    return [round(n / 2**31 - 1.0, 6) for n in struct.unpack(f"<{_EMBEDDING_DIMS}I", digest)]


def _embedding_body(body: dict[str, Any], a: _Answer) -> dict[str, Any]:
    as_base64 = body.get("encoding_format") == "base64"  # the openai SDK asks for this
    data = []
    for index, text in enumerate(_texts(body.get("input"))):
        vector = _vector(text)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": a.prompt_tokens, "total_tokens": a.prompt_tokens}
    return {"object": "list", "data": data, "model": a.model, "usage": usage}


class _Kind(enum.Enum):
    MODELS = "models"
    GENERATE = "generate"
    EMBED = "embed"


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    kind: _Kind
    required: str  # the body field a real server insists on; also the param of marker errors
    key: Callable[[dict[str, Any]], str]
    chars: Callable[[dict[str, Any]], int]
    build: Callable[[dict[str, Any], _Answer], dict[str, Any]]
    max_tokens_fields: tuple[str, ...] = ()


def _no_key(body: dict[str, Any]) -> str:
    return ""


def _no_chars(body: dict[str, Any]) -> int:
    return 0


def _no_body(body: dict[str, Any], a: _Answer) -> dict[str, Any]:
    return {}


_ROUTES: Final[dict[str, _Route]] = {
    "/v1/chat/completions": _Route(
        "POST",
        _Kind.GENERATE,
        "messages",
        _chat_key,
        _chat_chars,
        _chat_body,
        ("max_completion_tokens", "max_tokens"),
    ),
    "/v1/completions": _Route(
        "POST",
        _Kind.GENERATE,
        "prompt",
        _prompt_key,
        _prompt_chars,
        _completion_body,
        ("max_tokens",),
    ),
    "/v1/responses": _Route(
        "POST",
        _Kind.GENERATE,
        "input",
        _responses_key,
        _responses_chars,
        _responses_body,
        ("max_output_tokens",),
    ),
    "/v1/embeddings": _Route(
        "POST", _Kind.EMBED, "input", _input_key, _input_chars, _embedding_body
    ),
    "/v1/models": _Route("GET", _Kind.MODELS, "", _no_key, _no_chars, _no_body),
}


def _answer(route: _Route, body: dict[str, Any], key: str, cfg: UpstreamConfig) -> _Answer:
    completion = cfg.completion_tokens
    for name in route.max_tokens_fields:
        cap = body.get(name)
        if isinstance(cap, int) and not isinstance(cap, bool):
            completion = max(0, min(cap, completion))
            break
    if route.kind is _Kind.EMBED:
        completion = 0
    return _Answer(
        model=str(body["model"]),
        text="echo: " + key[:_ECHO_CHARS],
        prompt_tokens=max(1, route.chars(body) // 4),
        completion_tokens=completion,
        reasoning_tokens=min(cfg.reasoning_tokens, completion),
    )


def _error_body(message: str, err_type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


_SERVER_ERROR_TEXT: Final = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}
_HTML_GARBAGE: Final = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body>"


class _Fault(enum.Enum):
    NONE = 0
    DROP = 1
    HANG = 2
    RATE_LIMIT = 3
    ERROR = 4
    GARBAGE = 5


# The order the cumulative thresholds are laid out in, see FakeUpstream._draw_fault.
_FAULT_ORDER: Final = (_Fault.DROP, _Fault.HANG, _Fault.RATE_LIMIT, _Fault.ERROR, _Fault.GARBAGE)


def _thresholds(cfg: UpstreamConfig) -> tuple[float, ...]:
    rates = (cfg.drop_rate, cfg.hang_rate, cfg.rate_429, cfg.error_rate, cfg.garbage_rate)
    edges, total = [], 0.0
    for rate in rates:
        total += rate
        edges.append(total)
    return tuple(edges)


def _has(text: str, marker: str) -> bool:
    return bool(marker) and marker in text


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the fake upstream only listens on loopback addresses, not {host!r}")


# ---------------------------------------------------------------- the server


class FakeUpstream:
    """The fake server, run inside the current event loop (``async with``)."""

    def __init__(
        self, config: UpstreamConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        _require_loopback(host)
        self._host = host
        self._requested_port = port
        self._port = 0
        self._config = config or UpstreamConfig()
        self._thresholds = _thresholds(self._config)
        self._auth: str | None = None
        self._rng = random.Random(self._config.seed)
        self._stats = _Stats()
        self._failed_once: set[str] = set()
        self._pause_until = 0.0  # monotonic end of the latest Retry-After pause we announced
        self._pause_announced = 0.0  # monotonic time that pause was announced
        self._key_pause: dict[str, float] = {}
        self._started = time.monotonic()
        self._runner: web.ServerRunner | None = None
        self._server: web.Server | None = None

    # -- lifecycle

    async def start(self) -> str:
        everything = [f.name for f in dataclasses.fields(UpstreamConfig)]
        self._apply(_with_windows(self._config, self._started_windows(), time.time()), everything)
        # handler_cancellation: a request whose client gave up stops counting as in flight.
        self._server = web.Server(
            self._handle,
            request_factory=self._make_request,
            handler_cancellation=True,
            access_log=None,
        )
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port, backlog=_BACKLOG)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._started = time.monotonic()
        return self.url

    def _started_windows(self) -> list[str]:
        # A window already given as an absolute time is kept; a duration starts now.
        cfg = self._config
        return [
            name
            for name, until, seconds in (
                ("storm_seconds", cfg.storm_until, cfg.storm_seconds),
                ("down_seconds", cfg.down_until, cfg.down_seconds),
            )
            if seconds > 0 and until == 0
        ]

    async def close(self) -> None:
        if self._runner is None:
            return
        # Hung requests would otherwise hold shutdown for shutdown_timeout; cut them now.
        if self._server is not None:
            for connection in self._server.connections:
                connection.force_close()
        await self._runner.cleanup()
        self._runner = None
        self._server = None

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # Called as soon as the headers are parsed, before the handler task has even started:
        # the earliest moment this process can know the request is there.
        arrived = time.monotonic()
        request = web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            asyncio.get_running_loop(),
            client_max_size=_MAX_BODY,
        )
        request[_ARRIVED] = arrived
        return request

    # -- public state

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    @property
    def config(self) -> UpstreamConfig:
        return self._config

    def configure(
        self, changes: Mapping[str, object] | None = None, **more: object
    ) -> UpstreamConfig:
        """Change some config fields now (like POST /_fake/config); ValueError if bad.

        ``storm_seconds`` / ``down_seconds`` start their window at this call; 0 ends it.
        """
        merged = {**(changes or {}), **more}
        new = _with_windows(self._config.updated(merged), list(merged), time.time())
        self._apply(new, list(merged))
        return new

    def _apply(self, config: UpstreamConfig, changed: Sequence[str]) -> None:
        self._config = config
        self._thresholds = _thresholds(config)
        self._auth = f"Bearer {config.api_key}" if config.api_key else None
        if "seed" in changed:
            self._rng.seed(config.seed)

    def reset(self) -> None:
        """Zero the stats and forget fail-once lines and announced pauses (not the config)."""
        in_flight = self._stats.in_flight
        self._stats = _Stats(in_flight=in_flight, max_concurrency_seen=in_flight)
        self._failed_once.clear()
        self._key_pause.clear()
        self._pause_until = 0.0
        self._rng.seed(self._config.seed)

    def stats(self, *, per_key: bool = False) -> dict[str, Any]:
        """What GET /_fake/stats answers: counters, by_route, by_status, state and config.

        ``early_requests`` counts requests that arrived while any Retry-After we sent was in
        force; ``early_same_key`` only those whose own line had been told to wait.
        """
        out = self._stats.counters()
        now, wall, cfg = time.monotonic(), time.time(), self._config
        out["storm_active"] = cfg.storm_until > wall
        out["down_active"] = cfg.down_until > wall
        out["pause_remaining_s"] = round(max(0.0, self._pause_until - now), 3)
        out["uptime_s"] = round(now - self._started, 3)
        out["config"] = cfg.to_dict()
        if per_key:
            out["per_key"] = dict(self._stats.per_key)
        return out

    def count_for(self, key: str) -> int:
        """How many requests carried this custom key (last user message / embedding input)."""
        return self._stats.per_key.get(key, 0)

    # -- request handling

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/"):
            return await self._control(request)
        stats = self._stats
        stats.requests += 1
        stats.by_route[path] += 1
        stats.in_flight += 1
        if stats.in_flight > stats.max_concurrency_seen:
            stats.max_concurrency_seen = stats.in_flight
        try:
            return await self._serve(request, path)
        except asyncio.CancelledError:
            self._stats.client_disconnects += 1
            raise
        finally:
            # self._stats, not stats: reset() may have swapped the object meanwhile.
            self._stats.in_flight -= 1

    async def _serve(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        now, wall, cfg = request[_ARRIVED], time.time(), self._config
        self._note_early(now)
        route = _ROUTES.get(path)
        if route is None or request.method != route.method:
            return self._not_found(request, route)
        if cfg.down_until > wall:
            return self._down(request, cfg)
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            self._stats.unauthorized += 1
            return self._error(
                401, "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
            )
        if route.kind is _Kind.MODELS:
            return self._models(cfg)
        body = await self._read_body(request, route, cfg)
        if isinstance(body, web.Response):
            return body
        key = route.key(body)
        self._note_key(key, now)
        if cfg.storm_until > wall:
            self._stats.storm_rejected += 1
            return self._rate_limited(key, now, cfg)
        fault = self._draw_fault()
        if fault is _Fault.RATE_LIMIT:
            return self._rate_limited(key, now, cfg)
        await self._delay(key, cfg, now)
        return await self._finish(request, route, body, key, fault)

    def _note_early(self, now: float) -> None:
        ahead = self._pause_until - now
        # A request that arrives within the grace after a 429 was sent was already on its way
        # (the client could not know yet): it is in flight, not early.
        grace = self._config.early_grace_ms / 1000.0
        if ahead > 0 and now - self._pause_announced > grace:
            stats = self._stats
            stats.early_requests += 1
            stats.early_max_ms = max(stats.early_max_ms, ahead * 1000.0)

    def _note_key(self, key: str, now: float) -> None:
        stats = self._stats
        stats.per_key[key] += 1
        until = self._key_pause.get(key)
        if until is None:
            return
        if until > now:
            stats.early_same_key += 1
        else:
            del self._key_pause[key]

    async def _read_body(
        self, request: web.BaseRequest, route: _Route, cfg: UpstreamConfig
    ) -> dict[str, Any] | web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        problem = self._check_body(body, route, cfg)
        if problem is not None:
            self._stats.bad_requests += 1
            return problem
        assert isinstance(body, dict)
        return body

    def _check_body(self, body: object, route: _Route, cfg: UpstreamConfig) -> web.Response | None:
        if not isinstance(body, dict):
            return self._error(
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                None,
                None,
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(
                400, "you must provide a model parameter", "invalid_request_error", "model", None
            )
        if route.required not in body:
            return self._error(
                400,
                f"Missing required parameter: '{route.required}'.",
                "invalid_request_error",
                route.required,
                "missing_required_parameter",
            )
        if cfg.reject_unknown_models and model not in cfg.models:
            return self._error(
                404,
                f"The model `{model}` does not exist.",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        return None

    def _draw_fault(self) -> _Fault:
        # One draw per request, so the rates are exact fractions of one shared die.
        r = self._rng.random()
        edges = self._thresholds
        if r >= edges[-1]:
            return _Fault.NONE
        for fault, edge in zip(_FAULT_ORDER, edges, strict=True):
            if r < edge:
                return fault
        return _Fault.NONE

    async def _delay(self, key: str, cfg: UpstreamConfig, arrived: float) -> None:
        delay = cfg.latency
        if cfg.jitter:
            delay += self._rng.uniform(-cfg.jitter, cfg.jitter)
        if _has(key, cfg.slow_contains):
            delay += cfg.slow_seconds
        if delay <= 0:
            return
        # Due `delay` after arrival: the time spent parsing and queueing is part of it.
        due = arrived + delay
        left = due - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        self._note_late(time.monotonic() - due)

    def _note_late(self, late: float) -> None:
        stats = self._stats
        stats.delayed += 1
        stats.late_sum_ms += late * 1000.0
        stats.late_max_ms = max(stats.late_max_ms, late * 1000.0)

    async def _finish(
        self,
        request: web.BaseRequest,
        route: _Route,
        body: dict[str, Any],
        key: str,
        fault: _Fault,
    ) -> web.StreamResponse:
        cfg = self._config
        if fault is _Fault.DROP or _has(key, cfg.drop_contains):
            return self._drop(request)
        if fault is _Fault.HANG or _has(key, cfg.hang_contains):
            self._stats.hung += 1
            await asyncio.sleep(cfg.hang_seconds)
            return self._drop(request)
        if fault is _Fault.ERROR:
            return self._injected_error(cfg)
        marked = self._marked_failure(route, key, cfg)
        if marked is not None:
            return marked
        payload = route.build(body, _answer(route, body, key, cfg))
        if fault is _Fault.GARBAGE:
            return self._garbage(payload)
        self._stats.ok += 1
        return self._respond(200, orjson.dumps(payload))

    def _marked_failure(self, route: _Route, key: str, cfg: UpstreamConfig) -> web.Response | None:
        if _has(key, cfg.fail_contains):
            self._stats.fail_marker += 1
            return self._error(
                400,
                "This model's maximum context length is 8192 tokens. However, your messages "
                "resulted in 9000 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                route.required,
                "context_length_exceeded",
            )
        if _has(key, cfg.fail_once_contains) and key not in self._failed_once:
            self._failed_once.add(key)
            self._stats.fail_once += 1
            return self._error(500, _SERVER_ERROR_TEXT[500], "server_error", None, None)
        return None

    # -- answers

    def _respond(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = _JSON,
    ) -> web.Response:
        self._stats.by_status[status] += 1
        all_headers = {"Content-Type": content_type, "x-request-id": "req_" + _hex()}
        if headers:
            all_headers.update(headers)
        return web.Response(body=body, status=status, headers=all_headers)

    def _error(
        self,
        status: int,
        message: str,
        err_type: str,
        param: str | None,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        return self._respond(status, _error_body(message, err_type, param, code), headers)

    def _rate_limited(self, key: str, now: float, cfg: UpstreamConfig) -> web.Response:
        self._stats.rate_limited += 1
        until = now + cfg.retry_after
        if until > self._pause_until:
            self._pause_until, self._pause_announced = until, now
        self._key_pause[key] = until
        seconds = math.ceil(cfg.retry_after)
        headers = {
            "Retry-After": str(seconds),
            "retry-after-ms": str(round(cfg.retry_after * 1000)),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{cfg.retry_after:g}s",
        }
        return self._error(
            429,
            f"Rate limit reached for requests. Please try again in {cfg.retry_after:g}s.",
            "requests",
            None,
            "rate_limit_exceeded",
            headers,
        )

    def _injected_error(self, cfg: UpstreamConfig) -> web.Response:
        self._stats.errors_injected += 1
        status = self._rng.choice(cfg.error_statuses)
        message = _SERVER_ERROR_TEXT.get(status, f"Injected error {status}.")
        err_type = "server_error" if status >= 500 else "invalid_request_error"
        return self._error(status, message, err_type, None, None)

    def _garbage(self, payload: dict[str, Any]) -> web.Response:
        self._stats.garbage += 1
        if self._rng.random() < 0.5:
            whole = orjson.dumps(payload)
            return self._respond(200, whole[: len(whole) // 2])
        return self._respond(200, _HTML_GARBAGE, content_type="text/html")

    def _drop(self, request: web.BaseRequest) -> web.Response:
        self._stats.dropped += 1
        transport = request.transport
        if transport is not None:
            # abort, not close: the client sees a reset, as from a crashed backend.
            transport.abort()
        # Nothing can be written any more; aiohttp quietly discards this response.
        return web.Response(status=500)

    def _down(self, request: web.BaseRequest, cfg: UpstreamConfig) -> web.Response:
        self._stats.down_rejected += 1
        if cfg.down_mode == "503":
            return self._error(503, _SERVER_ERROR_TEXT[503], "server_error", None, None)
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=503)

    def _not_found(self, request: web.BaseRequest, route: _Route | None) -> web.Response:
        self._stats.bad_requests += 1
        if route is not None:
            return self._error(
                405,
                f"Method {request.method} not allowed.",
                "invalid_request_error",
                None,
                "method_not_allowed",
            )
        return self._error(
            404,
            f"Invalid URL ({request.method} {request.path})",
            "invalid_request_error",
            None,
            "unknown_url",
        )

    def _models(self, cfg: UpstreamConfig) -> web.Response:
        self._stats.ok += 1
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "lowtide-fake"}
            for model in cfg.models
        ]
        return self._respond(200, orjson.dumps({"object": "list", "data": data}))

    # -- control routes

    async def _control(self, request: web.BaseRequest) -> web.Response:
        route = (request.method, request.path)
        if route == ("GET", "/_fake/stats"):
            per_key = request.query.get("per_key", "") in ("1", "true", "yes")
            return _control_json(200, self.stats(per_key=per_key))
        if route == ("GET", "/_fake/config"):
            return _control_json(200, {"config": self._config.to_dict()})
        if route == ("POST", "/_fake/config"):
            return await self._control_config(request)
        if route == ("POST", "/_fake/reset"):
            self.reset()
            return _control_json(200, {"ok": True})
        return _control_json(404, {"error": f"no control route {request.method} {request.path}"})

    async def _control_config(self, request: web.BaseRequest) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of config fields")
            config = self.configure(changes)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return _control_json(400, {"error": str(exc)})
        return _control_json(200, {"config": config.to_dict()})


def _control_json(status: int, payload: object) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=_JSON)


# ---------------------------------------------------------------- running as a process


class UpstreamProcess:
    """The fake upstream in a child process, so it has its own CPU like a real backend.

    ``with UpstreamProcess(UpstreamConfig(latency=0.01)) as proc: proc.url``. Change it at
    run time through ``POST {url}/_fake/config``; read it through ``GET {url}/_fake/stats``.
    """

    def __init__(
        self,
        config: UpstreamConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        _require_loopback(host)
        self._argv = [
            sys.executable,
            "-m",
            "lowtide.testing.upstream",
            "--host",
            host,
            "--port",
            str(port),
            "--config-json",
            orjson.dumps((config or UpstreamConfig()).to_dict()).decode(),
            *extra_args,
        ]
        self._timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the fake upstream process is not running")
        return self._proc.pid

    def start(self) -> str:
        self._proc = subprocess.Popen(
            self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        try:
            self.url = _read_listening(self._proc, self._timeout)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> UpstreamProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _read_listening(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the child's ``LISTENING <url>`` line and return the url."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the fake upstream exited with status {proc.wait()}")
            if line.startswith("LISTENING "):
                return line.split(None, 1)[1].strip()
    raise TimeoutError(f"the fake upstream did not start within {timeout:g}s")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lowtide.testing.upstream",
        description="A fake OpenAI-compatible model server with fault injection.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-json", help="a JSON object of config fields, before the flags")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument(
        "--no-parent-watch", action="store_true", help="keep running if the parent process dies"
    )
    defaults = UpstreamConfig()
    for f in dataclasses.fields(UpstreamConfig):
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            metavar="VALUE",
            help=f"{f.metadata['help']} (default: {shown})",
        )
    return parser


def _config_from_args(args: argparse.Namespace) -> UpstreamConfig:
    changes: dict[str, object] = {}
    if args.config_json:
        loaded = orjson.loads(args.config_json)
        if not isinstance(loaded, dict):
            raise ValueError("--config-json must be a JSON object")
        changes.update(loaded)
    hints = _field_hints()
    for name, hint in hints.items():
        text = getattr(args, name)
        if text is not None:
            changes[name] = _FROM_TEXT[hint](text)
    return UpstreamConfig().updated(changes)


async def _watch_parent(stop: asyncio.Event) -> None:
    # A fake server left behind by a crashed test run would hold its port and CPU forever.
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            stop.set()


async def _serve_forever(config: UpstreamConfig, host: str, port: int, watch_parent: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeUpstream(config, host=host, port=port) as upstream:
        sys.stdout.write(f"LISTENING {upstream.url}\n")
        sys.stdout.flush()
        watcher = asyncio.create_task(_watch_parent(stop)) if watch_parent else None
        await stop.wait()
        if watcher is not None:
            watcher.cancel()


def _loop_factory(no_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if no_uvloop:
        return None
    try:
        import uvloop  # optional: it comes with uvicorn[standard]
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        _require_loopback(args.host)
        config = _config_from_args(args)
    except (ValueError, orjson.JSONDecodeError) as exc:
        parser.error(str(exc))
    with asyncio.Runner(loop_factory=_loop_factory(args.no_uvloop)) as runner:
        runner.run(_serve_forever(config, args.host, args.port, not args.no_parent_watch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
