"""Request bodies in, answer bodies out, shaped as vLLM's OpenAI-compatible server shapes them.

Errors use the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}`` with vLLM's
types (``BadRequestError``, ``NotFoundError``); a refusal by the rpm/tpm budget is shaped as
OpenAI's (``type`` ``requests`` or ``tokens``, ``code`` ``rate_limit_exceeded``).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from lowtide.testing.engine_sim.config import EngineConfig
from lowtide.testing.engine_sim.core import Seq
from lowtide.testing.engine_sim.limits import Verdict
from lowtide.testing.engine_sim.tokens import (
    TokenizeError,
    answer_text,
    chat_tokens,
    prompt_tokens,
)


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or {404: "NotFoundError", 409: "ConflictError"}.get(
            status, "BadRequestError"
        )
        self.code = code if code is not None else status
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True, slots=True)
class Generation:
    """A parsed completions or chat request: what the engine needs to run it."""

    tokens: tuple[int, ...]
    max_tokens: int

    @property
    def budget_tokens(self) -> int:
        return len(self.tokens) + self.max_tokens


def _require_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return body


def check_model(body: dict[str, Any], config: EngineConfig) -> None:
    model = body.get("model")
    if model is None:
        return  # vLLM serves its one model to a request that names none
    if model != config.model:
        raise HttpError(404, f"The model `{model}` does not exist.", param="model")


def _max_tokens(body: dict[str, Any], config: EngineConfig) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HttpError(400, f"'{name}' must be an integer of at least 1", param=name)
        return value
    return config.default_max_tokens


def _unsupported(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise HttpError(400, "the simulated engine does not stream", param="stream")
    n = body.get("n", 1)
    if n != 1:
        raise HttpError(400, "the simulated engine answers n = 1 only", param="n")


def _fits(tokens: tuple[int, ...], max_tokens: int, config: EngineConfig) -> None:
    if len(tokens) + max_tokens > config.max_model_len:
        raise HttpError(
            400,
            f"This model's maximum context length is {config.max_model_len} tokens. "
            f"However, you requested {len(tokens) + max_tokens} tokens ({len(tokens)} in the "
            f"messages, {max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.",
        )


def chat_request(raw: object, config: EngineConfig) -> Generation:
    body = _require_object(raw)
    check_model(body, config)
    _unsupported(body)
    try:
        tokens = chat_tokens(body.get("messages"), bool(body.get("add_generation_prompt", True)))
    except TokenizeError as exc:
        raise HttpError(400, str(exc), param="messages") from None
    max_tokens = _max_tokens(body, config)
    _fits(tokens, max_tokens, config)
    return Generation(tokens, max_tokens)


def completion_request(raw: object, config: EngineConfig) -> Generation:
    body = _require_object(raw)
    check_model(body, config)
    _unsupported(body)
    try:
        tokens = prompt_tokens(body.get("prompt"), bool(body.get("add_special_tokens", True)))
    except TokenizeError as exc:
        raise HttpError(400, str(exc), param="prompt") from None
    max_tokens = _max_tokens(body, config)
    _fits(tokens, max_tokens, config)
    return Generation(tokens, max_tokens)


def tokenize(raw: object, config: EngineConfig) -> dict[str, Any]:
    """``POST /tokenize``: ``{"count", "max_model_len", "tokens", "token_strs"}``."""
    body = _require_object(raw)
    check_model(body, config)
    try:
        if "messages" in body:
            tokens = chat_tokens(body["messages"], bool(body.get("add_generation_prompt", True)))
        else:
            tokens = prompt_tokens(body.get("prompt"), bool(body.get("add_special_tokens", True)))
    except TokenizeError as exc:
        raise HttpError(400, str(exc)) from None
    return {
        "count": len(tokens),
        "max_model_len": config.max_model_len,
        "tokens": list(tokens),
        "token_strs": None,
    }


def _usage(seq: Seq) -> dict[str, Any]:
    return {
        "prompt_tokens": seq.prompt_len,
        "total_tokens": seq.prompt_len + seq.output,
        "completion_tokens": seq.output,
        "prompt_tokens_details": {"cached_tokens": seq.cached_tokens or 0},
    }


def chat_answer(seq: Seq, model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": answer_text(seq.output), "tool_calls": []}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                # No end-of-sequence is modelled: every answer runs to its max_tokens.
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": _usage(seq),
    }


def completion_answer(seq: Seq, model: str) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": answer_text(seq.output),
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
    }
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": _usage(seq),
    }


def models_answer(config: EngineConfig, created: int) -> dict[str, Any]:
    model = {
        "id": config.model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": config.model,
        "parent": None,
        "max_model_len": config.max_model_len,
    }
    return {"object": "list", "data": [model]}


def _real_seconds(model_seconds: float, speed: float) -> float:
    return model_seconds / speed


def budget_headers(verdict: Verdict, config: EngineConfig) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers (durations in real seconds, as clients wait)."""
    headers: dict[str, str] = {}
    for kind, limit, remaining, reset in (
        ("requests", config.rpm, verdict.remaining_requests, verdict.reset_requests),
        ("tokens", config.tpm, verdict.remaining_tokens, verdict.reset_tokens),
    ):
        if limit:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
            headers[f"x-ratelimit-reset-{kind}"] = f"{_real_seconds(reset, config.speed):.3f}s"
    return headers


def refused(verdict: Verdict, config: EngineConfig, tokens: int) -> HttpError:
    """The 429 for a request the budget refused, with when to come back."""
    real = _real_seconds(verdict.retry_after, config.speed)
    # One millisecond more than the exact wait: a client's timer may fire a little early.
    headers = {
        "retry-after": str(max(1, math.ceil(real))),
        "retry-after-ms": str(math.ceil(real * 1000) + 1),
        **budget_headers(verdict, config),
    }
    if verdict.limit == "requests":
        what = f"requests per min (RPM): Limit {config.rpm}, Requested 1"
    else:
        what = f"tokens per min (TPM): Limit {config.tpm}, Requested {tokens}"
    return HttpError(
        429,
        f"Rate limit reached for {config.model} on {what}. Please try again in {real:.3f}s.",
        type_=verdict.limit,
        code="rate_limit_exceeded",
        headers=headers,
    )
