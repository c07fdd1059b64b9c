"""The order in which a batch's requests are sent: lines that share a prompt prefix together,
and within a group of them the longest first.

Why. Inference engines (vLLM, SGLang) keep the KV cache of the prompt prefixes they computed
for as long as they have room for it. Bulk files are full of requests that share a long prefix
(a system prompt, few-shot examples, a document asked many questions); sent in file order, a
shuffled file evicts each prefix before it is needed again and every line computes it anew.
Sent grouped, each prefix is computed about once. Within a group, the longest requests go
first, so that the batch does not end on a few long requests running alone.

The key. Each valid line's prompt is rendered as text, in the order the engine reads it
(``render``: a chat's messages in order, the tools after the leading system messages; a
completion's prompt; a response's instructions then its input; embeddings have none, as
engines do not cache their prefixes). The first ``LEVELS`` bytes of that text, 256 B, 512 B,
1 KiB ... 64 KiB (about 64 to 16,000 tokens), are hashed: one CRC-32 per level, each standing
for everything before its end. A line's level ``j`` is *shared* when another line of the
batch has the same hash there. A line's group is its path of shared levels, from the first to
the deepest (a small trie): sorting by that path puts lines with the longest shared prefix
side by side, and groups that share a shorter prefix next to each other. So

- lines with one long system prompt and different questions share every level the prompt
  covers: one group, whatever the questions;
- lines with a short generic system prompt ("You are a helpful assistant.") followed by long
  distinct documents differ within the first 256 bytes: no group (nothing worth reusing);
- a document asked several questions after a shared system prompt makes a group inside the
  system prompt's group.

A shared prefix is recognised to at least half its length (the deepest level it covers).
Nothing here knows an engine's block size or tokenizer: two prompts share a level exactly when
their text does, and any engine caches a prefix that the text shares.

Within a group, lines go longest first by an estimate in tokens: the line's JSON bytes / 4
plus its ``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``; then file order.
Lines in no group come first, longest first. The result is each line's rank (``send_order``,
what claims follow) and its group (``prefix_group``: a 63-bit id of its deepest shared level,
0 for none), which the router uses to keep a group on one backend.

Memory: while the file streams, a line costs 4 bytes per level it reaches plus 5 (its depth and
estimate), in arrays; the ranking at the end is transient.
"""

from __future__ import annotations

import zlib
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import orjson

#: Ends of the hashed prefixes, in bytes of the rendered prompt: 256 B to 64 KiB.
LEVELS: Final = tuple(256 << i for i in range(9))
_DEEPEST: Final = LEVELS[-1]
_LEVEL_COUNT: Final = len(LEVELS)
_NONE: Final = array("I", [0] * _LEVEL_COUNT)
_crc32: Final = zlib.crc32
_LEVEL_BITS: Final = 32  # a prefix_group is (level << 32) | its CRC-32, so ids of levels differ
_MAX_ESTIMATE: Final = (1 << 32) - 1
_CHARS_PER_TOKEN: Final = 4  # a token-ish count from bytes, for ordering only

_CHAT: Final = frozenset({"/v1/chat/completions", "/v1/chat/ds-test"})
# Sorted keys: the same content written with its keys in another order is the same prefix.
_JSON: Final = orjson.OPT_SORT_KEYS


def prompt_bytes(endpoint: str, raw: bytes, body: dict[str, Any]) -> bytes | None:
    """The start of the request's prompt, in the order the engine reads it, as bytes (the
    caller hashes at most ``LEVELS[-1]`` of them); None for an endpoint whose prefixes are not
    cached (embeddings) or an unknown one. ``raw`` is the line's JSON text, ``body`` its body.

    A chat's messages are taken as the line writes them, from its ``"messages"`` key on: the
    validator has already parsed the line, and serialising the messages again would cost a
    quarter of its time. Lines written by one program write the same messages with the same
    bytes, so two lines share a prefix of this text exactly when they share their first
    messages and the start of the next. What follows the messages in the line (other keys, the
    custom_id) only ever lengthens a prefix that is already distinct.
    """
    if endpoint in _CHAT:
        start = raw.find(b'"messages"')
        if start >= 0:
            return raw[start : start + _DEEPEST]
        return orjson.dumps(body.get("messages"), option=_JSON)  # written with escapes
    if endpoint == "/v1/completions":
        return _completion(body.get("prompt"))
    if endpoint == "/v1/responses":
        parts = (body.get("instructions"), body.get("tools"), body.get("input"))
        return orjson.dumps(parts, option=_JSON)
    return None


def _completion(prompt: object) -> bytes | None:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # several prompts in one request: each is its own sequence
    if isinstance(prompt, str):
        return prompt[:_DEEPEST].encode("utf-8", "surrogatepass")
    if isinstance(prompt, list):
        # Token ids: 4 bytes each, about what a token's text takes.
        try:
            return array("I", prompt[: _DEEPEST // 4]).tobytes()
        except (TypeError, OverflowError):
            return orjson.dumps(prompt[: _DEEPEST // 4], option=_JSON)
    return None


def level_hashes(data: bytes) -> list[int]:
    """The CRC-32 of each prefix of ``data`` that ``LEVELS`` ends within it (never 0: 0 marks
    a level a line does not reach)."""
    out: list[int] = []
    _hash_levels(data, out)
    return out


def _hash_levels(data: bytes, out: array[int] | list[int]) -> int:
    """Append ``level_hashes(data)`` to ``out``; return how many there are."""
    view = memoryview(data)
    size = len(data)
    crc = start = depth = 0
    for end in LEVELS:
        if end > size:
            break
        crc = _crc32(view[start:end], crc)
        out.append(crc or 1)
        start = end
        depth += 1
    return depth


def estimate(body: dict[str, Any], length: int) -> int:
    """A line's size in tokens, roughly: its JSON bytes / 4 plus the output it asks for."""
    out = 0
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if type(value) is int:
            out = max(0, value)
            break
    return min(_MAX_ESTIMATE, length // _CHARS_PER_TOKEN + out)


class PrefixOrder:
    """Collects each valid line's key while its file streams past, then ranks the lines.

    ``add`` is called once per valid line, in file order; ``ranks`` once at the end.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        # Every line's level hashes, _LEVEL_COUNT a line, 0 for the levels it does not reach.
        self._hashes = array("I")
        self._estimates = array("I")

    def __len__(self) -> int:
        return len(self._estimates)

    def add(self, raw: bytes, body: dict[str, Any], length: int) -> None:
        data = prompt_bytes(self._endpoint, raw, body)
        depth = _hash_levels(data, self._hashes) if data else 0
        if depth < _LEVEL_COUNT:
            self._hashes.extend(_NONE[depth:])
        self._estimates.append(estimate(body, length))

    def ranks(self) -> tuple[list[int], list[int]]:
        """(send order, prefix group) of each line added, in the order they were added."""
        n = len(self._estimates)
        columns = [self._hashes[level::_LEVEL_COUNT] for level in range(_LEVEL_COUNT)]
        shared: list[set[int]] = []
        for column in columns:
            found = _shared(column)
            if not found:
                break  # a deeper level shared implies this one is: nothing deeper is
            shared.append(found)
        groups = [0] * n
        keys: list[tuple[tuple[int, ...], int, int]]
        if not shared:
            keys = [((), -e, i) for i, e in enumerate(self._estimates)]
        else:
            keys = []
            rows = zip(*columns[: len(shared)], strict=True)
            for i, (row, e) in enumerate(zip(rows, self._estimates, strict=True)):
                depth = 0
                for value, found in zip(row, shared, strict=False):
                    if value not in found:
                        break
                    depth += 1
                path = row[:depth]
                if depth:
                    groups[i] = ((depth - 1) << _LEVEL_BITS) | path[-1]
                keys.append((path, -e, i))
        keys.sort()
        order = [0] * n
        for rank, (_, _, i) in enumerate(keys):
            order[i] = rank
        return order, groups


def _shared(column: Sequence[int]) -> set[int]:
    """The hashes found on more than one line at this level (0, no such level, never is)."""
    found = {value for value, count in Counter(column).items() if count > 1}
    found.discard(0)
    return found
