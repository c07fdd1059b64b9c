"""The request body fields that a backend or a model sets (``defaults`` / ``overrides``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

#: Keys of ``defaults`` / ``overrides`` that the batch line itself decides.
_LINE_ONLY = frozenset({"model", "stream"})
#: The thinking switch has one spelling in the config; each dialect writes it its own way.
_OTHER_SWITCHES = {
    "think": "enable_thinking",
    "chat_template_kwargs.enable_thinking": "enable_thinking",
    "thinking_token_budget": "thinking_budget",
}
#: The output-token limit, whichever name the endpoint gives it; and the least value of each.
_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_INT_KEYS = {**dict.fromkeys(_LIMITS, 1), "thinking_budget": 0}


def _body_fields(value: dict[str, Any]) -> dict[str, Any]:
    """Check a ``defaults`` / ``overrides`` table: JSON values, and the keys lowtide reads
    itself with the types it needs."""
    for key, item in value.items():
        if key in _LINE_ONLY:
            raise ValueError(f"{key!r} cannot be set here: the batch line decides it")
        _json_only(key, item)
    nested = value.get("chat_template_kwargs")
    spelled = set(value) | (
        {f"chat_template_kwargs.{k}" for k in nested} if isinstance(nested, dict) else set()
    )
    for other, name in _OTHER_SWITCHES.items():
        if other in spelled:
            raise ValueError(f"write {other!r} as {name!r}: each dialect spells it its own way")
    limits = [k for k in _LIMITS if k in value]
    if len(limits) > 1:
        raise ValueError(f"{' and '.join(limits)} are one limit: give one of them")
    for key, least in _INT_KEYS.items():
        if key in value and (type(value[key]) is not int or value[key] < least):
            raise ValueError(f"{key} must be a whole number of tokens, at least {least}")
    if "enable_thinking" in value and not isinstance(value["enable_thinking"], bool):
        raise ValueError("enable_thinking must be true or false")
    if "reasoning_effort" in value and not isinstance(value["reasoning_effort"], str):
        raise ValueError("reasoning_effort must be a string")
    return value


def _json_only(key: str, item: Any) -> None:
    if isinstance(item, dict):
        for inner, nested in item.items():
            _json_only(f"{key}.{inner}", nested)
    elif isinstance(item, list):
        for nested in item:
            _json_only(key, nested)
    elif not isinstance(item, str | int | float | bool):
        raise ValueError(f"{key}: a request body holds JSON values, not {type(item).__name__}")


#: Request body fields, as in a batch line's ``body`` (checked by ``_body_fields``).
BodyFields = Annotated[dict[str, Any], AfterValidator(_body_fields)]
