"""What a batch would take, read from its input file before it runs (docs/extensions.md,
"Cost estimate"): pure counting over the lines; the service reads the file, asks a backend to
tokenize a sample and prices the result.

Input tokens, when no backend tokenizes: ``ceil(characters / 4)`` of the prompt's text (the
rule of thumb for English with GPT-style tokenizers), plus ``MESSAGE_TOKENS`` per chat message
(the role and the template's markers), plus the tokens of prompts given as token ids. With a
backend that tokenizes, a sample of lines is counted exactly and the others are scaled by the
sample's tokens per character.

The output-token ceiling of a line is its own limit (``max_tokens``, ``max_completion_tokens``
or ``max_output_tokens``, the endpoint's names), else the default the configuration sets for
the model or backend, never more than an override's cap (``lowtide.backends.shaping``); a line
with none of these has no ceiling. Embeddings produce no output tokens.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

#: Tokens counted per chat message beyond its text, when estimating from characters.
MESSAGE_TOKENS: Final = 4
#: Characters per token, when estimating from characters.
CHARS_PER_TOKEN: Final = 4
#: Lines counted by a backend's tokenizer, at most (the others are scaled from them).
SAMPLE_LINES: Final = 16
_BOM: Final = b"\xef\xbb\xbf"
_EMBEDDINGS: Final = "/v1/embeddings"


@dataclass(frozen=True, slots=True)
class Limit:
    """How one backend limits a line's output: the body fields that carry the limit, the
    configured default for a line without one, and the cap of an override."""

    fields: tuple[str, ...]
    default: int | None = None
    cap: int | None = None

    def of(self, body: dict[str, Any]) -> int | None:
        given = next((body[f] for f in self.fields if body.get(f) is not None), None)
        if type(given) is not int:
            given = self.default
        if given is None:
            return self.cap
        return given if self.cap is None else min(given, self.cap)


@dataclass(frozen=True, slots=True)
class Prompt:
    """The text a line asks about, how many chat messages hold it, and tokens given as ids."""

    text: str
    messages: int = 0
    token_ids: int = 0

    def approx_tokens(self) -> int:
        return (
            math.ceil(len(self.text) / CHARS_PER_TOKEN)
            + MESSAGE_TOKENS * self.messages
            + self.token_ids
        )


def prompt_of(body: dict[str, Any], endpoint: str) -> Prompt:
    """The prompt of a request body at ``endpoint`` (chat: the messages; completions: the
    prompt; embeddings and responses: the input)."""
    if "messages" in body:
        messages = body["messages"] if isinstance(body["messages"], list) else []
        texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
        return Prompt("\n".join(texts), messages=len(texts))
    key = "prompt" if "prompt" in body else "input"
    value = body.get(key)
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        return Prompt("", token_ids=len(value))  # one prompt as token ids
    if isinstance(value, list):
        parts = [v for v in value if not isinstance(v, list)]
        ids = sum(len(v) for v in value if isinstance(v, list))
        items = sum(1 for v in parts if isinstance(v, dict))
        return Prompt("\n".join(_text(v) for v in parts), messages=items, token_ids=ids)
    return Prompt(_text(value))


def _text(content: Any) -> str:
    """The text of a message's content or of an input item: a string, or its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return _text(content.get("content", content.get("text")))
    if isinstance(content, list):
        return "\n".join(_text(part) for part in content)
    return ""


@dataclass
class Tally:
    """Counts over the request lines of one file, fed one parsed body at a time.
    ``fields``: the names of the output-token limit at the file's endpoint."""

    endpoint: str
    fields: tuple[str, ...]
    lines: int = 0
    approx_tokens: int = 0
    chars: int = 0
    #: How many lines give each output-token limit (None: the line gives none).
    limits: Counter[int | None] = field(default_factory=Counter)
    #: (offset, length, approximate tokens) of the lines kept for a tokenizer: a uniform
    #: sample.
    sample: list[tuple[int, int, int]] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)

    def add(self, body: dict[str, Any], offset: int, length: int) -> None:
        prompt = prompt_of(body, self.endpoint)
        self.lines += 1
        self.approx_tokens += prompt.approx_tokens()
        self.chars += len(prompt.text)
        self._keep((offset, length, prompt.approx_tokens()))
        given = next((body[f] for f in self.fields if body.get(f) is not None), None)
        self.limits[given if type(given) is int else None] += 1

    def output_ceiling(self, limits: Sequence[Limit]) -> tuple[int, int]:
        """(the sum of the lines' output-token ceilings, the lines that have none) when each
        line may go to a backend limiting it by any of ``limits``: its ceiling is the most of
        theirs, and a line that one of them leaves unlimited has none."""
        if self.endpoint == _EMBEDDINGS:
            return 0, 0
        total = unbounded = 0
        for given, count in self.limits.items():
            body = {self.fields[0]: given} if given is not None and self.fields else {}
            ceilings = [limit.of(body) for limit in limits] or [None]
            if any(c is None for c in ceilings):
                unbounded += count
            else:
                total += count * max(c for c in ceilings if c is not None)
        return total, unbounded

    def _keep(self, item: tuple[int, int, int]) -> None:
        # Reservoir sampling (algorithm R), seeded: the same file gives the same sample.
        if len(self.sample) < SAMPLE_LINES:
            self.sample.append(item)
            return
        slot = self._rng.randrange(self.lines)
        if slot < SAMPLE_LINES:
            self.sample[slot] = item


class LineScanner:
    """Splits a JSONL file fed in chunks into request bodies for a ``Tally``, with each line's
    byte offset and length (as the validator reckons them). Lines that are not a JSON object
    with an object ``body`` are skipped: the validator reports them."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._pending = b""
        self._offset = 0  # file offset of the first byte of _pending
        self._head = True

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk
        if self._head:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._pending = data
                return
            self._head = False
            if data.startswith(_BOM):
                data, self._offset = data[len(_BOM) :], self._offset + len(_BOM)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line(data[start:end], self._offset + start)
            start = end + 1
        self._pending, self._offset = data[start:], self._offset + start

    def finish(self) -> Tally:
        if self._pending:
            self._line(self._pending, self._offset)
            self._pending = b""
        return self.tally

    def _line(self, raw: bytes, offset: int) -> None:
        if not raw.strip():
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        body = obj.get("body") if isinstance(obj, dict) else None
        if isinstance(body, dict):
            self.tally.add(body, offset, len(raw) - raw.endswith(b"\r"))


def tokenize_payload(body: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The body of a tokenize call for one line (without the model): its chat messages, or
    its prompt as text."""
    if isinstance(body.get("messages"), list):
        return {"messages": body["messages"]}
    return {"prompt": prompt_of(body, endpoint).text}


@dataclass(frozen=True, slots=True)
class Estimate:
    """The answer of ``POST /v1/batches/estimate`` (``lowtide.domain.wire.BatchEstimate``)."""

    input_file_id: str
    endpoint: str
    model: str | None
    errors: list[dict[str, Any]] | None
    lines: int = 0
    input_tokens: int | None = None
    #: ``tokenize`` (every line counted by a backend), ``tokenize_sample``, ``characters``,
    #: ``test_model`` (its fixed usage).
    input_tokens_method: str | None = None
    tokenized_lines: int = 0
    output_tokens_max: int | None = None
    lines_without_max_tokens: int = 0
    cost_min: float | None = None
    cost_max: float | None = None
    currency: str | None = None
    lines_per_minute: float | None = None
    expected_seconds: float | None = None
    #: Why a figure is missing or how it was reached, in words (None when all is plain).
    note: str | None = None
