"""How each kind of backend wants a chat request written, and which of its errors are final.

A batch line is written for one product (Model Studio turns thinking off with a top-level
``enable_thinking``, vLLM and SGLang with ``chat_template_kwargs``, Ollama with ``think`` or
``reasoning_effort``, OpenAI's reasoning models take ``reasoning_effort`` and
``max_completion_tokens``). Sent as it is to another backend, such a line is rejected, or
worse, silently thinks. A dialect reads the line's thinking request whatever its spelling
(``read_thinking``), and writes it, and the output-token limit, the way its backend reads them
(``Dialect.write``). Everything else in the body passes through untouched.

Each dialect is a row of ``DIALECTS``: data and two or three small functions, applied to a body
that the dispatcher has already parsed, touching only keys that are present. The table of what
each one does, and what it cannot express, is in docs/backends.md; tests/unit/test_dialects.py
checks every row of it.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from lowtide.settings import Dialect as DialectName

#: Every key a line may spell a thinking request with, in any dialect.
THINKING_KEYS: Final = frozenset(
    {
        "enable_thinking",
        "thinking_budget",
        "chat_template_kwargs",
        "thinking_token_budget",
        "think",
        "reasoning_effort",
    }
)
#: The levels Ollama's native ``think`` takes besides true and false.
_THINK_LEVELS: Final = frozenset({"low", "medium", "high"})


class Thinking(NamedTuple):
    """A thinking request, however it was spelled: the switch (None: the line does not say),
    a budget of thinking tokens, and an effort level (OpenAI's ``reasoning_effort``). A tuple:
    one is made per request that has one, and a dataclass costs several times more to make."""

    switch: bool | None = None
    budget: int | None = None
    effort: str | None = None

    def __bool__(self) -> bool:
        return self.switch is not None or self.budget is not None or self.effort is not None


NOTHING: Final = Thinking()


def read_thinking(body: dict[str, Any], native: str) -> Thinking:
    """Take every spelling of a thinking request out of ``body`` and return what it asks.

    When a line spells the switch more than once, the spelling ``native`` to the target
    backend wins, then the order of ``THINKING_KEYS``. A value of the wrong type (a switch
    that is not a boolean) is no thinking request: it is left in the body as it was.
    """
    if THINKING_KEYS.isdisjoint(body):
        return NOTHING  # the common case: a dictionary lookup per key, nothing more
    switches: dict[str, bool] = {}
    effort = None
    value = body.get("enable_thinking")
    if type(value) is bool:
        switches["enable_thinking"] = body.pop("enable_thinking")
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and type(kwargs.get("enable_thinking")) is bool:
        switches["chat_template_kwargs"] = kwargs.pop("enable_thinking")
        if not kwargs:
            del body["chat_template_kwargs"]
    value = body.get("think")
    if type(value) is bool or (isinstance(value, str) and value in _THINK_LEVELS):
        body.pop("think")
        switches["think"] = value is not False
        effort = value if isinstance(value, str) else None
    value = body.get("reasoning_effort")
    if isinstance(value, str):
        body.pop("reasoning_effort")
        switches["reasoning_effort"] = value != "none"
        effort = value if value != "none" else effort
    budgets = {key: body.pop(key) for key in _BUDGET_KEYS if _is_count(body.get(key))}
    switch = switches.get(native, next(iter(switches.values()), None))
    budget = budgets.get(_BUDGET_OF.get(native, ""), next(iter(budgets.values()), None))
    return Thinking(switch, budget, effort if switch is not False else None)


_BUDGET_KEYS: Final = ("thinking_budget", "thinking_token_budget")
#: The budget's spelling that goes with each spelling of the switch.
_BUDGET_OF: Final = {
    "enable_thinking": "thinking_budget",
    "chat_template_kwargs": "thinking_token_budget",
}


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


# --- how each backend is written to ----------------------------------------------------------


def _as_reasoning_effort(body: dict[str, Any], t: Thinking) -> None:
    """OpenAI, and Ollama's OpenAI-compatible API: ``reasoning_effort``, where ``none`` is off.
    Neither takes a budget of thinking tokens per request: it is dropped."""
    if t.switch is False:
        body["reasoning_effort"] = "none"
    elif t.effort is not None:
        body["reasoning_effort"] = t.effort


def _as_enable_thinking(body: dict[str, Any], t: Thinking) -> None:
    """Model Studio: a top-level ``enable_thinking`` and ``thinking_budget``; it has no effort
    levels (an effort turns thinking on, at the model's own depth)."""
    if t.switch is not None:
        body["enable_thinking"] = t.switch
    if t.budget is not None and t.switch is not False:
        body["thinking_budget"] = t.budget


def _template_switch(body: dict[str, Any], t: Thinking) -> None:
    # A new dictionary rather than the line's own: it may be a shared value of the config.
    if t.switch is not None:
        kwargs = body.get("chat_template_kwargs")
        rest = kwargs if isinstance(kwargs, dict) else {}
        body["chat_template_kwargs"] = {**rest, "enable_thinking": t.switch}


def _as_vllm(body: dict[str, Any], t: Thinking) -> None:
    """vLLM: the chat template's ``enable_thinking``; the budget as ``thinking_token_budget``
    (vLLM with a reasoning config; an older one ignores it); ``reasoning_effort`` as it is."""
    _template_switch(body, t)
    if t.switch is not False:
        if t.budget is not None:
            body["thinking_token_budget"] = t.budget
        if t.effort is not None:
            body["reasoning_effort"] = t.effort


def _as_sglang(body: dict[str, Any], t: Thinking) -> None:
    """SGLang: the chat template's ``enable_thinking`` and ``reasoning_effort``; no budget
    per request (it needs a custom logit processor): dropped."""
    _template_switch(body, t)
    if t.switch is not False and t.effort is not None:
        body["reasoning_effort"] = t.effort


def _as_llamacpp(body: dict[str, Any], t: Thinking) -> None:
    """llama.cpp's server: the chat template's ``enable_thinking`` (llama-cpp-python's server
    ignores it: its template arguments are fixed when it starts). The budget is a flag of the
    server (``--reasoning-budget``), effort levels it has none: both dropped."""
    _template_switch(body, t)


# --- answers ---------------------------------------------------------------------------------

# llama-cpp-python validates the body with pydantic and answers a failed validation with 500
# ("1 validation error:\n  {'type': 'less_than_equal', 'loc': ('body', 'top_p'), ..."), and a
# logit_bias key that is no token id with 500 "invalid literal for int() with base 10: 'x'";
# llama.cpp's own server answers a value of the wrong type with 500 "[json.exception.type_error.302]
# type must be number, but is string". The same body gets the same answer every time.
_VALIDATION: Final = re.compile(r"\d+ validation errors?:")
_BAD_VALUE: Final = ("invalid literal for int() with base 10:", "[json.exception.type_error.")


def _llamacpp_final(status: int, parsed: Any) -> bool:
    """A 500 of llama.cpp's server that says the request itself is wrong: no retry helps."""
    if status != 500 or not isinstance(parsed, dict):
        return False
    error = parsed.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        return False
    if _VALIDATION.match(message):
        return "'loc': ('body'" in message
    return message.startswith(_BAD_VALUE)


# --- the table -------------------------------------------------------------------------------

#: Chat endpoint: the other name of the output-token limit (renamed to ``limit`` when present).
_OTHER_LIMIT: Final = {"max_completion_tokens": "max_tokens", "max_tokens": "max_completion_tokens"}


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    #: The spelling of the thinking switch this backend reads (wins when a line has several).
    native: str
    write_thinking: Callable[[dict[str, Any], Thinking], None]
    #: The name of the output-token limit this backend reads in a chat request; None when it
    #: reads both ``max_tokens`` and ``max_completion_tokens`` (left as they are).
    limit: str | None
    #: An error answer (status, parsed body) that is final although its status is retryable.
    final: Callable[[int, Any], bool] | None = None

    def write(self, body: dict[str, Any], thinking: Thinking) -> None:
        """Write a chat request's thinking request and output-token limit for this backend."""
        if thinking:
            self.write_thinking(body, thinking)
        if self.limit is not None:
            other = _OTHER_LIMIT[self.limit]
            if other in body:
                value = body.pop(other)
                body.setdefault(self.limit, value)  # a line that gives both: ours wins


DIALECTS: Final[dict[str, Dialect]] = {
    "openai": Dialect("openai", "reasoning_effort", _as_reasoning_effort, "max_completion_tokens"),
    "vllm": Dialect("vllm", "chat_template_kwargs", _as_vllm, None),
    "sglang": Dialect("sglang", "chat_template_kwargs", _as_sglang, None),
    "dashscope": Dialect("dashscope", "enable_thinking", _as_enable_thinking, "max_tokens"),
    "ollama": Dialect("ollama", "reasoning_effort", _as_reasoning_effort, "max_tokens"),
    "llamacpp": Dialect(
        "llamacpp", "chat_template_kwargs", _as_llamacpp, "max_tokens", _llamacpp_final
    ),
}
assert set(DIALECTS) == set(typing.get_args(DialectName)), "every configurable dialect has a row"
