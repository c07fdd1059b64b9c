"""Batch lines for the llama.cpp server, and the check of lowtide's result lines against what
the server answers to the same requests sent directly."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from tests.realengine.conftest import ALIAS, MODEL
from tests.realengine.llama_server import LlamaServer

_WORDS = (
    "the of and to batch line request token model answer question hello world prompt test "
    "zebra quux naïve 日本語 ☃ 42 Hello, world! lowtide llama"
)
OVERFLOW = "overflow"  # about 3 tokens a word: 150+ words are far over the 256 of the context
EDGE = "edge"  # 65 to 90 words: about 200 to 280 tokens, near the end of the context


def _text(rng: random.Random, low: int, high: int) -> str:
    words = _WORDS.split()
    return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))


def chat_lines(count: int, *, seed: int, prefix: str = "q") -> list[dict[str, Any]]:
    """``count`` varied chat lines: short prompts with small ``max_tokens``, some greedy, some
    with a system message; every 20th far over the context (the server answers 400), every
    20th near its end (the answer is cut short by the context, or the line is over it); a few
    without ``max_tokens`` (the answer runs to the end of the context)."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        custom_id = f"{prefix}{i}"
        if i % 20 == 0:
            content, custom_id = _text(rng, 150, 200), f"{OVERFLOW}-{custom_id}"
        elif i % 20 == 1:
            content, custom_id = _text(rng, 65, 90), f"{EDGE}-{custom_id}"
        else:
            content = _text(rng, 1, 30)
        messages = [{"role": "user", "content": content}]
        if i % 7 == 3:
            messages.insert(0, {"role": "system", "content": _text(rng, 1, 8)})
        body: dict[str, Any] = {"model": MODEL, "messages": messages}
        if i % 37 != 5:
            body["max_tokens"] = 64 if i % 20 == 1 else rng.choice((1, 2, 4, 8, 16))
        if i % 3 == 0:
            body["temperature"] = 0
        lines.append(
            {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return lines


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cut_by_context: int = 0  # answers shorter than max_tokens because the context ran out


def check_against_llama(
    llama: LlamaServer,
    lines: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> Totals:
    """Send each answered line's request to the llama server directly, and check that the
    result line holds what it answers: the same status, the same usage for a 2xx, the same
    body and message for an error. Lines that never ran (cancelled) are left out."""
    by_id = {line["custom_id"]: line for line in lines}
    totals = Totals()
    for result in outputs:
        body = by_id[result["custom_id"]]["body"]
        status, direct = llama.chat({**body, "model": ALIAS})
        response = result["response"]
        assert (response["status_code"], status) == (200, 200), result
        got = response["body"]
        assert got["model"] == ALIAS, "lowtide sends the backend's name for the model"
        assert got["usage"] == direct["usage"], (result["custom_id"], direct)
        usage = got["usage"]
        room = llama.model.context_length - usage["prompt_tokens"]
        expected = min(body.get("max_tokens") or room, room)
        assert usage["completion_tokens"] == expected, result
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        totals.input_tokens += usage["prompt_tokens"]
        totals.output_tokens += usage["completion_tokens"]
        totals.total_tokens += usage["total_tokens"]
        totals.cut_by_context += expected < body.get("max_tokens", 0)
    for result in errors:
        if result["response"] is None:
            continue  # never ran: cancelled or expired
        body = by_id[result["custom_id"]]["body"]
        status, direct = llama.chat({**body, "model": ALIAS})
        response, error = result["response"], result["error"]
        assert response["status_code"] == status >= 400, result
        assert response["body"] == direct, "the backend's error body is kept as it was"
        expected_code = direct["error"]["code"] or direct["error"]["type"]
        # Every error these lines get says the request is wrong: a 400, or a 500 that the
        # llamacpp dialect knows to be final (an invalid body). Neither is retried, so the
        # message is the server's own, with no "(after N attempts)".
        assert (error["code"], error["message"]) == (expected_code, direct["error"]["message"])
    return totals
