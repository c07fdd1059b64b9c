"""The order in which a batch's requests are sent: lines that share a prompt prefix together,
and within a group of them the longest first.

Why. Inference engines (vLLM, SGLang) keep the KV cache of the prompt prefixes they computed
for as long as they have room for it. Bulk files are full of requests that share a long prefix
(a system prompt, few-shot examples, a document asked many questions); sent in file order, a
shuffled file evicts each prefix before it is needed again and every line computes it anew.
Sent grouped, each prefix is computed about once. Within a group, the longest requests go
first, so that the batch does not end on a few long requests running alone.

The key. Of each valid line, the start of its prompt as the engine reads it
(``prompt_bytes``: a chat's messages in order, as the line writes them; a completion's prompt;
a response's instructions, tools and input; nothing for embeddings, whose prefixes engines do
not cache) is hashed at ``LEVELS``: its first 256 B, 512 B, 1 KiB ... 64 KiB (about 64 to
16,000 tokens), one 64-bit XXH3 per level, each standing for everything before its end.
A line's level ``j`` is *shared* when another line of the
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

Memory: while the file streams, a line costs 76 bytes in arrays (8 per level, 4 for its
estimate), and no text is kept; the ranking at the end is transient.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final

import orjson
import xxhash

#: Ends of the hashed prefixes, in bytes of the rendered prompt: 256 B to 64 KiB.
LEVELS: Final = tuple(256 << i for i in range(9))
_DEEPEST: Final = LEVELS[-1]
_LEVEL_COUNT: Final = len(LEVELS)
_GROUP_MASK: Final = (1 << 63) - 1  # a prefix_group is a signed 64-bit column
_MAX_ESTIMATE: Final = (1 << 32) - 1
_CHARS_PER_TOKEN: Final = 4  # a token-ish count from bytes, for ordering only
# XXH3: the validator's hot path hashes up to twice each byte of a prompt's first 64 KiB, and
# XXH3 does it ten times faster than CRC-32 (zlib's), whose cost showed in validation time.
_hash: Final = xxhash.xxh3_64_intdigest
_bisect: Final = bisect.bisect_right

_CHAT: Final = frozenset({"/v1/chat/completions", "/v1/chat/ds-test"})
# Sorted keys: the same content written with its keys in another order is the same prefix.
_JSON: Final = orjson.OPT_SORT_KEYS


def prompt_bytes(endpoint: str, raw: bytes, body: dict[str, Any]) -> bytes | memoryview | None:
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
            return memoryview(raw)[start : start + _DEEPEST]
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


def level_hashes(data: bytes | memoryview) -> list[int]:
    """A 64-bit hash of each prefix of ``data`` that a level of ``LEVELS`` ends within it:
    each stands for everything before its end. (0 marks a level a line does not reach: a
    prefix whose hash is 0, one in 2**64, is taken for one that is not there.)"""
    view = memoryview(data)
    return [_hash(view[:end]) for end in LEVELS[: _bisect(LEVELS, len(view))]]


def estimate(body: dict[str, Any], length: int) -> int:
    """A line's size in tokens, roughly: its JSON bytes / 4 plus the output it asks for."""
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
        if value is None:
            value = body.get("max_output_tokens")
    out = value if type(value) is int and value > 0 else 0
    return min(_MAX_ESTIMATE, length // _CHARS_PER_TOKEN + out)


class PrefixOrder:
    """Collects each valid line's key while its file streams past, then ranks the lines.

    ``add`` is called once per valid line, in file order; ``ranks`` once at the end.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._chat = endpoint in _CHAT
        # Every line's level hashes, _LEVEL_COUNT a line, 0 for the levels it does not reach.
        self._hashes = array("Q")
        self._estimates = array("I")

    def __len__(self) -> int:
        return len(self._estimates)

    def add(self, raw: bytes, body: dict[str, Any], length: int) -> None:
        # The validator's hot path: ``prompt_bytes``, ``level_hashes`` and ``estimate``
        # written out, each call saved being measurable over 50,000 lines.
        if self._chat and (start := raw.find(b'"messages"')) >= 0:
            view = memoryview(raw)[start : start + _DEEPEST]
        else:
            data = prompt_bytes(self._endpoint, raw, body)
            view = memoryview(data if data is not None else b"")
        size = len(view)
        self._hashes.extend([_hash(view[:end]) if end <= size else 0 for end in LEVELS])
        value = body.get("max_completion_tokens")
        if value is None:
            value = body.get("max_tokens")
            if value is None:
                value = body.get("max_output_tokens")
        out = value if type(value) is int and value > 0 else 0
        self._estimates.append(min(_MAX_ESTIMATE, length // _CHARS_PER_TOKEN + out))

    def ranks(self) -> tuple[array[int], array[int]]:
        """(send order, prefix group) of each line added, in the order they were added.

        Sorted as (the line's path of shared levels, its estimate, longest first, its index),
        each key packed into one integer: a path's rank among the batch's paths (0: none),
        then the estimate's complement, then the index. Transient memory stays near 100 bytes
        a line (one key), plus a count of one level's hashes at a time.
        """
        n = len(self._estimates)
        columns: list[array[int]] = []
        shared: list[set[int]] = []
        for level in range(_LEVEL_COUNT):
            column = self._hashes[level::_LEVEL_COUNT]
            found = _shared(column)
            if not found:
                break  # a deeper level shared implies this one is: nothing deeper is
            columns.append(column)
            shared.append(found)
        groups = array("q", bytes(8 * n))
        path_rank = self._paths(columns, shared, groups) if shared else None
        estimates = self._estimates
        keys = [
            ((path_rank[i] if path_rank else 0) << 64) | ((_MAX_ESTIMATE - e) << 32) | i
            for i, e in enumerate(estimates)
        ]
        keys.sort()
        order = array("I", bytes(4 * n))
        for rank, key in enumerate(keys):
            order[key & 0xFFFF_FFFF] = rank
        return order, groups

    @staticmethod
    def _paths(columns: list[array[int]], shared: list[set[int]], groups: array[int]) -> array[int]:
        """Each line's path of shared levels, as its rank among the batch's distinct paths
        in sorted order (0: no shared level); fills in each line's group (the hash of its
        deepest shared level, which stands for the whole path). One pass per level, not per
        line and level: this runs over every line of a 50,000-line batch."""
        depth = bytes(len(groups))
        for level, (column, found) in enumerate(zip(columns, shared, strict=True)):
            has = found.__contains__
            depth = bytes(
                [d + 1 if d == level and has(v) else d for d, v in zip(depth, column, strict=True)]
            )
        deepest = [columns[d - 1][i] if d else 0 for i, d in enumerate(depth)]
        # A path from one line of each group; sorted, they put a group next to the groups
        # it shares a shorter prefix with.
        first: dict[int, int] = {}
        for i, group in enumerate(deepest):
            if group:
                first.setdefault(group, i)
        paths = sorted((tuple(c[i] for c in columns[: depth[i]]), g) for g, i in first.items())
        rank_of = {group: rank for rank, (_, group) in enumerate(paths, 1)}
        for i, group in enumerate(deepest):
            if group:
                groups[i] = group & _GROUP_MASK or 1
        return array("I", [rank_of.get(group, 0) for group in deepest])


def _shared(column: Sequence[int]) -> set[int]:
    """The hashes found on more than one line at this level (0, no such level, never is)."""
    found = {value for value, count in Counter(column).items() if count > 1}
    found.discard(0)
    return found
