"""Reading a request: the text a line is known by (its key) and how long its prompt is.

The key is what the fake answers with (``echo: <first 40 characters>``), what its per-line
faults look for (``FAIL400``, ``SLOW``...) and what ``/_fake/stats?per_key=1`` counts by.
"""

from __future__ import annotations

from typing import Any

import orjson


def _text(content: object) -> str:
    """Message content is a string or a list of parts; only the text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _items(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _last_user_text(items: list[dict[str, Any]]) -> str:
    for item in reversed(items):
        if item.get("role") == "user":
            return _text(item.get("content"))
    return _text(items[-1].get("content")) if items else ""


def chat_key(body: dict[str, Any]) -> str:
    return _last_user_text(_items(body.get("messages")))


def chat_chars(body: dict[str, Any]) -> int:
    return sum(len(_text(m.get("content"))) for m in _items(body.get("messages")))


def responses_key(body: dict[str, Any]) -> str:
    value = body.get("input")
    return value if isinstance(value, str) else _last_user_text(_items(value))


def responses_chars(body: dict[str, Any]) -> int:
    value = body.get("input")
    chars = (
        len(value)
        if isinstance(value, str)
        else sum(len(_text(item.get("content"))) for item in _items(value))
    )
    instructions = body.get("instructions")
    return chars + (len(instructions) if isinstance(instructions, str) else 0)


def texts(value: object) -> list[str]:
    """Prompts / embedding inputs: a string, strings, or token arrays (shown as JSON)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, int) for v in value):
        return [orjson.dumps(value).decode()]
    return [v if isinstance(v, str) else orjson.dumps(v).decode() for v in value]


def prompt_key(body: dict[str, Any]) -> str:
    return "\n".join(texts(body.get("prompt")))


def prompt_chars(body: dict[str, Any]) -> int:
    return sum(len(t) for t in texts(body.get("prompt")))


def input_key(body: dict[str, Any]) -> str:
    return "\n".join(texts(body.get("input")))


def input_chars(body: dict[str, Any]) -> int:
    return sum(len(t) for t in texts(body.get("input")))
