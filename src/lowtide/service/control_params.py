"""The batch controls a create (or a retry) may set, checked (docs/extensions.md): ``priority``,
``max_cost``, ``max_error_rate``. Each is optional; a refusal is a 400 naming the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lowtide import errors
from lowtide.domain import controls

#: The fields, in the order the canonical parameters list them.
FIELDS = ("priority", "max_cost", "max_error_rate")


def parse(params: Mapping[str, Any]) -> dict[str, Any]:
    """The controls ``params`` sets (a field given as null is left out), checked."""
    found: dict[str, Any] = {}
    for name, check in (
        ("priority", priority),
        ("max_cost", max_cost),
        ("max_error_rate", max_error_rate),
    ):
        if params.get(name) is not None:
            found[name] = check(params[name])
    return found


def priority(value: Any) -> int:
    least, most = controls.PRIORITY_RANGE
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or not least <= value <= most:
        raise errors.InvalidValue(
            f"'priority' must be a whole number from {least} to {most}.", param="priority"
        )
    return value


def max_cost(value: Any) -> float:
    if not _number(value) or not value > 0:
        raise errors.InvalidValue(
            "'max_cost' must be a number above 0, in the currency of the model's prices.",
            param="max_cost",
        )
    return float(value)


def max_error_rate(value: Any) -> float:
    if not _number(value) or not 0 <= value <= 1:
        raise errors.InvalidValue(
            "'max_error_rate' must be a number from 0 to 1: the share of ended lines that "
            "may fail.",
            param="max_error_rate",
        )
    return float(value)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)
