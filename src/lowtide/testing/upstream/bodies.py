"""The bodies of successful answers, shaped as OpenAI's (and vLLM's) are.

Derived from the request alone, so the same line always gets the same text and usage; only
the ids and ``created`` differ from one answer to the next.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Final

from lowtide.testing.upstream.reading import texts

_EMBEDDING_DIMS: Final = 8


@dataclass(frozen=True, slots=True)
class Answer:
    model: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    #: The chat message field that carries a reasoning text ("": none), as vLLM, SGLang and
    #: DashScope (``reasoning_content``) or Ollama (``reasoning``) send it.
    reasoning_field: str = ""


def hex_id() -> str:
    return os.urandom(12).hex()


def _chat_usage(a: Answer) -> dict[str, Any]:
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


def chat_body(body: dict[str, Any], a: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": a.text,
        "refusal": None,
        "annotations": [],
    }
    if a.reasoning_field and a.reasoning_tokens:
        message[a.reasoning_field] = "thinking: " + a.text
    return {
        "id": "chatcmpl-" + hex_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _chat_usage(a),
        "service_tier": "default",
        "system_fingerprint": "fp_lowtide_fake",
    }


def completion_body(body: dict[str, Any], a: Answer) -> dict[str, Any]:
    return {
        "id": "cmpl-" + hex_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [{"text": a.text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": _chat_usage(a),
        "system_fingerprint": "fp_lowtide_fake",
    }


def responses_body(body: dict[str, Any], a: Answer) -> dict[str, Any]:
    content = [{"type": "output_text", "text": a.text, "annotations": [], "logprobs": []}]
    message = {
        "type": "message",
        "id": "msg_" + hex_id(),
        "status": "completed",
        "role": "assistant",
        "content": content,
    }
    return {
        "id": "resp_" + hex_id(),
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


def embedding_body(body: dict[str, Any], a: Answer) -> dict[str, Any]:
    as_base64 = body.get("encoding_format") == "base64"  # the openai SDK asks for this
    data = []
    for index, text in enumerate(texts(body.get("input"))):
        vector = _vector(text)
        embedding: object = (
            base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": a.prompt_tokens, "total_tokens": a.prompt_tokens}
    return {"object": "list", "data": data, "model": a.model, "usage": usage}
