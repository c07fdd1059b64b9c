"""A deterministic, cheap stand-in for a tokenizer and a chat template, and vLLM's block keys.

Tokens. Text is cut at whitespace into words, and each word into pieces of at most
``CHARS_PER_TOKEN`` (4) characters; each piece is one token, its id a CRC-32 of the piece's
UTF-8 bytes modulo ``VOCAB``. English averages about 1.3 BPE tokens per word and this gives
about 1.4: close enough for costs, and the same text always gives the same ids, so that
prefixes are shared exactly when the text is.

Chat template (Llama 3's shape): ``BOS``, then per message a header of three tokens
(start, role, end) followed by its content and an end-of-turn token, then, with
``add_generation_prompt``, the assistant's header.

Block keys (vLLM's automatic prefix caching): a prompt's tokens are cut into blocks of
``block_size``; the key of a full block is a hash of the previous block's key and the block's
tokens, so a key stands for everything before it too. Only full blocks get a key.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Final

CHARS_PER_TOKEN: Final = 4
VOCAB: Final = 128_000  # Llama 3's ordinary tokens; its special tokens start at 128000
BOS: Final = 128_000
START_HEADER: Final = 128_006
END_HEADER: Final = 128_007
END_OF_TURN: Final = 128_009
_ROOT_KEY: Final = 0x6C6F77  # the "parent" of a prompt's first block


class TokenizeError(ValueError):
    """The request's prompt or messages cannot be tokenized (answered 400)."""


@functools.lru_cache(maxsize=8192)
def text_tokens(text: str) -> tuple[int, ...]:
    """The token ids of ``text`` (memoised: batch lines repeat their system prompts)."""
    out: list[int] = []
    for word in text.split():
        for i in range(0, len(word), CHARS_PER_TOKEN):
            out.append(zlib.crc32(word[i : i + CHARS_PER_TOKEN].encode()) % VOCAB)
    return tuple(out)


def _role_token(role: str) -> int:
    return zlib.crc32(role.encode()) % VOCAB


def _content_text(content: object) -> str:
    """A message's text: a string, a list of text parts, or nothing (a tool-calling turn)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TokenizeError("only text content parts are simulated")
            text = part.get("text")
            if not isinstance(text, str):
                raise TokenizeError("a text content part needs a string 'text'")
            texts.append(text)
        return " ".join(texts)
    raise TokenizeError("a message's content must be a string or a list of text parts")


def chat_tokens(messages: object, add_generation_prompt: bool = True) -> tuple[int, ...]:
    """The prompt tokens of a chat request's ``messages``, through the stand-in template."""
    if not isinstance(messages, list) or not messages:
        raise TokenizeError("'messages' must be a non-empty list")
    out: list[int] = [BOS]
    for message in messages:
        if not isinstance(message, dict):
            raise TokenizeError("each message must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise TokenizeError("each message needs a string 'role'")
        out += (START_HEADER, _role_token(role), END_HEADER)
        out += text_tokens(_content_text(message.get("content")))
        out.append(END_OF_TURN)
    if add_generation_prompt:
        out += (START_HEADER, _role_token("assistant"), END_HEADER)
    return tuple(out)


def prompt_tokens(prompt: object, add_special_tokens: bool = True) -> tuple[int, ...]:
    """The tokens of a completions ``prompt``: a string, or a list of token ids."""
    if isinstance(prompt, str):
        body = text_tokens(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
        body = tuple(prompt)
    else:
        raise TokenizeError("'prompt' must be a string or a non-empty list of token ids")
    return (BOS, *body) if add_special_tokens else body


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def block_keys(tokens: Sequence[int], block_size: int) -> tuple[int, ...]:
    """The keys of the full blocks of ``tokens`` (a partial last block has none)."""
    keys: list[int] = []
    parent = _ROOT_KEY
    for start in range(0, len(tokens) - block_size + 1, block_size):
        # A tuple of ints hashes the same in every process (no hash randomisation for ints).
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        keys.append(parent)
    return tuple(keys)


# Words of at most CHARS_PER_TOKEN characters: the answer to a request of N output tokens
# is N of them, so that it tokenizes back to N tokens.
_ANSWER_WORDS: Final = ("the", "sim", "says", "one", "word", "each", "step", "done")


@functools.lru_cache(maxsize=1024)
def answer_text(completion_tokens: int) -> str:
    """The generated text of ``completion_tokens`` tokens (deterministic filler)."""
    n = len(_ANSWER_WORDS)
    return " ".join(_ANSWER_WORDS[i % n] for i in range(completion_tokens))
