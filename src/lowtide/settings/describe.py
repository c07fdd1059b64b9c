"""Validation errors of the settings, told in the config file's own terms."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from lowtide.settings.root import Settings


def describe_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    """One line per problem, in the file's own terms: the section as it is written in TOML
    (``[[backends]] "gpu-1"``, not ``backends.0``), the key, what is wrong, and for an unknown
    key the nearest known one."""
    return [_describe(error, raw) for error in exc.errors(include_url=False)]


def _describe(error: ErrorDetails, raw: dict[str, Any]) -> str:
    loc = error["loc"]
    section, model, rest = _section_of(loc, raw)
    where = " ".join(part for part in (section, ".".join(map(str, rest))) if part) or "config"
    if error["type"] == "extra_forbidden":
        known = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(rest[-1]) if rest else "", known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key; {hint}"
    got = error.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    return f"{where}: {error['msg']}{shown}"


def _section_of(
    loc: tuple[int | str, ...], raw: dict[str, Any]
) -> tuple[str, type[BaseModel] | None, tuple[int | str, ...]]:
    """``(how the section is written in TOML, its settings model, the rest of loc)``."""
    if not loc:
        return "", Settings, ()
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    if field is None:  # an unknown top-level section or key
        return "", Settings, loc
    model = _model_in(field.annotation)
    if typing.get_origin(field.annotation) is list and len(loc) > 1 and isinstance(loc[1], int):
        entry = (raw.get(name) or [None] * (loc[1] + 1))[loc[1]]
        label = entry.get("name") if isinstance(entry, dict) else None
        which = f'"{label}"' if isinstance(label, str) else f"#{loc[1] + 1}"
        return f"[[{name}]] {which}", model, loc[2:]
    if typing.get_origin(field.annotation) is dict and len(loc) > 1:
        return f'[{name}."{loc[1]}"]', model, loc[2:]
    return f"[{name}]", model, loc[1:]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model of a section: ``Section``, ``list[Section]`` or ``dict[str, Section]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
