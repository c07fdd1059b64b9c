"""The routes the fake serves, what each reads from a request and how it answers."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from lowtide.testing.upstream import bodies, reading
from lowtide.testing.upstream.bodies import Answer
from lowtide.testing.upstream.config import UpstreamConfig

_ECHO_CHARS: Final = 40


class Kind(enum.Enum):
    MODELS = "models"
    GENERATE = "generate"
    EMBED = "embed"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    kind: Kind
    required: str  # the body field a real server insists on; also the param of marker errors
    key: Callable[[dict[str, Any]], str]
    chars: Callable[[dict[str, Any]], int]
    build: Callable[[dict[str, Any], Answer], dict[str, Any]]
    max_tokens_fields: tuple[str, ...] = ()


def _no_key(body: dict[str, Any]) -> str:
    return ""


def _no_chars(body: dict[str, Any]) -> int:
    return 0


def _no_body(body: dict[str, Any], a: Answer) -> dict[str, Any]:
    return {}


MODELS_PATH: Final = "/v1/models"

ROUTES: Final[dict[str, Route]] = {
    "/v1/chat/completions": Route(
        "POST",
        Kind.GENERATE,
        "messages",
        reading.chat_key,
        reading.chat_chars,
        bodies.chat_body,
        ("max_completion_tokens", "max_tokens"),
    ),
    "/v1/completions": Route(
        "POST",
        Kind.GENERATE,
        "prompt",
        reading.prompt_key,
        reading.prompt_chars,
        bodies.completion_body,
        ("max_tokens",),
    ),
    "/v1/responses": Route(
        "POST",
        Kind.GENERATE,
        "input",
        reading.responses_key,
        reading.responses_chars,
        bodies.responses_body,
        ("max_output_tokens",),
    ),
    "/v1/embeddings": Route(
        "POST", Kind.EMBED, "input", reading.input_key, reading.input_chars, bodies.embedding_body
    ),
    # Answered apart, before any fault or counter (FakeUpstream._list_models): health probes.
    MODELS_PATH: Route("GET", Kind.MODELS, "", _no_key, _no_chars, _no_body),
}


def answer(route: Route, body: dict[str, Any], key: str, cfg: UpstreamConfig) -> Answer:
    completion = cfg.completion_tokens
    for name in route.max_tokens_fields:
        cap = body.get(name)
        if isinstance(cap, int) and not isinstance(cap, bool):
            completion = max(0, min(cap, completion))
            break
    if route.kind is Kind.EMBED:
        completion = 0
    return Answer(
        model=str(body["model"]),
        text="echo: " + key[:_ECHO_CHARS],
        prompt_tokens=max(1, route.chars(body) // 4),
        completion_tokens=completion,
        reasoning_tokens=min(cfg.reasoning_tokens, completion),
        reasoning_field=cfg.reasoning_field,
    )
