"""What a request will count against a backend's tokens-per-minute budget, before it is sent.

Hosted APIs count a request's prompt tokens plus its ``max_tokens`` (``max_completion_tokens``)
when it arrives, before the answer is known. lowtide estimates the same:

- the prompt: the UTF-8 bytes of its text (every string of ``messages``' contents, ``prompt``
  or ``input``; token ids in a ``prompt`` list count one each) plus ``MESSAGE_BYTES`` per message
  for the chat template, times a tokens-per-byte ratio. Until something is known the ratio is
  ``DEFAULT_RATIO`` (one token per 3 bytes: English text runs about 4 bytes per token, CJK text
  about 3, so this seldom underestimates). The ratio is calibrated per batch, first from the
  backend's ``POST /tokenize`` (vLLM's and SGLang's) for the first ``CALIBRATE_LINES`` lines of
  each batch it gets, when it has that route (a backend that answers anything but 200 is never
  asked again), then from every answer's ``usage.prompt_tokens``;
- the output: ``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``; without one,
  the mean output of the batch's answers so far (``DEFAULT_OUTPUT`` before any);
- plus ``MARGIN`` of the prompt estimate until the answer corrects it: a charge is set to the
  answer's ``prompt_tokens`` + ``max_tokens`` (or its ``completion_tokens`` without one).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import orjson

logger = logging.getLogger(__name__)

DEFAULT_RATIO: Final = 1 / 3
MESSAGE_BYTES: Final = 16
DEFAULT_OUTPUT: Final = 256
MARGIN: Final = 0.05
CALIBRATE_LINES: Final = 3
#: Batches whose own ratio is remembered (the oldest is forgotten).
BATCHES: Final = 256
#: Each new line's weight against what came before (so that the recent lines weigh most).
DECAY: Final = 0.98


@dataclass(frozen=True, slots=True)
class Prompt:
    """What is known of a request body before it is sent."""

    size: int  # bytes of text + MESSAGE_BYTES per message; 0 when nothing could be read
    token_ids: int  # prompt tokens given as ids (counted exactly)
    max_output: int | None  # max_completion_tokens / max_tokens, if set
    tokenizable: dict[str, Any] | None  # the body for /tokenize (messages or prompt)


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string inside ``value`` (content parts, nested lists)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_bytes(v) for k, v in value.items() if k not in ("type", "role"))
    return 0


def read_prompt(body: bytes) -> Prompt:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Prompt(len(body), 0, None, None)
    if not isinstance(parsed, dict):
        return Prompt(len(body), 0, None, None)
    max_output = None
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        out = parsed.get(name)
        if isinstance(out, int) and not isinstance(out, bool) and out > 0:
            max_output = out
            break
    messages, prompt = parsed.get("messages"), parsed.get("prompt", parsed.get("input"))
    model = parsed.get("model")
    if isinstance(messages, list):
        size = _text_bytes(messages) + MESSAGE_BYTES * len(messages)
        return Prompt(size, 0, max_output, {"model": model, "messages": messages})
    ids = 0
    if isinstance(prompt, list) and all(isinstance(p, int) for p in prompt):
        ids, size = len(prompt), 0
    else:
        size = _text_bytes(prompt)
    tokenizable = {"model": model, "prompt": prompt} if isinstance(prompt, str) else None
    return Prompt(size, ids, max_output, tokenizable)


@dataclass(slots=True)
class _Ratio:
    """Tokens per byte, from sums (decayed so that the recent lines weigh most)."""

    tokens: float = 0.0
    size: float = 0.0
    outputs: float = 0.0
    answers: float = 0.0

    def add(self, tokens: int, size: int) -> None:
        self.tokens = self.tokens * DECAY + tokens
        self.size = self.size * DECAY + size

    def add_output(self, tokens: int) -> None:
        self.outputs = self.outputs * DECAY + tokens
        self.answers = self.answers * DECAY + 1

    def ratio(self) -> float | None:
        return self.tokens / self.size if self.size > 0 else None

    def output(self) -> float | None:
        return self.outputs / self.answers if self.answers > 0 else None


@dataclass(frozen=True, slots=True)
class Estimate:
    prompt: Prompt
    batch: str
    prompt_tokens: int
    output_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


class TokenEstimator:
    """The estimates of one backend (see the module docstring). Pure: ``/tokenize`` is asked
    by the caller, which hands the count back through ``calibrate``."""

    def __init__(self) -> None:
        self.backend = _Ratio()
        self._batches: OrderedDict[str, _Ratio] = OrderedDict()
        self._tokenized: dict[str, int] = {}
        #: False once the backend answered /tokenize with anything but a count.
        self.tokenize_works = True

    def _batch(self, batch: str) -> _Ratio:
        found = self._batches.get(batch)
        if found is None:
            found = self._batches[batch] = _Ratio()
            if len(self._batches) > BATCHES:
                self._batches.popitem(last=False)
        self._batches.move_to_end(batch)
        return found

    def ratio(self, batch: str) -> float:
        return self._batch(batch).ratio() or self.backend.ratio() or DEFAULT_RATIO

    def wants_tokenize(self, batch: str, prompt: Prompt) -> bool:
        """Whether to ask ``/tokenize`` for this line (one of a batch's first lines)."""
        if not self.tokenize_works or prompt.tokenizable is None or prompt.size == 0:
            return False
        asked = self._tokenized.get(batch, 0)
        if asked >= CALIBRATE_LINES:
            return False
        self._tokenized[batch] = asked + 1
        if len(self._tokenized) > BATCHES:
            del self._tokenized[next(iter(self._tokenized))]
        return True

    def calibrate(self, batch: str, prompt: Prompt, count: int) -> None:
        """``/tokenize`` said the prompt is ``count`` tokens."""
        if prompt.size > 0 and count > 0:
            self._batch(batch).add(count, prompt.size)
            self.backend.add(count, prompt.size)

    def estimate(self, batch: str, prompt: Prompt) -> Estimate:
        ratio = self.ratio(batch)
        text = math.ceil(prompt.size * ratio * (1 + MARGIN))
        output = prompt.max_output
        if output is None:
            seen = self._batch(batch).output() or self.backend.output()
            output = math.ceil(seen) if seen is not None else DEFAULT_OUTPUT
        return Estimate(prompt, batch, text + prompt.token_ids, output)

    def answered(self, estimate: Estimate, prompt_tokens: int, output_tokens: int) -> int:
        """Learn from an answer's usage; returns what the request really counted."""
        text = prompt_tokens - estimate.prompt.token_ids
        if estimate.prompt.size > 0 and text > 0:
            self._batch(estimate.batch).add(text, estimate.prompt.size)
            self.backend.add(text, estimate.prompt.size)
        if estimate.prompt.max_output is None and output_tokens > 0:
            self._batch(estimate.batch).add_output(output_tokens)
            self.backend.add_output(output_tokens)
        output = estimate.prompt.max_output
        return prompt_tokens + (output if output is not None else output_tokens)
