"""The list filters, built once for both dialects.

``list_files`` and ``list_batches`` take a ``{where}`` and a ``{limit}`` slot (``queries.fill``):
their conditions depend on which filters a request gives. ``Params`` numbers the parameters
as the dialect writes them (``$n`` or ``?n``), so the same clauses serve both stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lowtide.domain.records import BatchFilter
from lowtide.store.queries import Dialect, fill

#: A substring test of a lower-cased column, as each dialect spells it.
_CONTAINS = {"postgres": "strpos({column}, {value}) > 0", "sqlite": "instr({column}, {value}) > 0"}


@dataclass(slots=True)
class Params:
    """Numbered parameters of one statement and the conditions that use them."""

    dialect: Dialect
    values: list[Any] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def add(self, value: Any) -> str:
        """Bind ``value``; returns its placeholder."""
        self.values.append(value)
        return f"{'$' if self.dialect == 'postgres' else '?'}{len(self.values)}"

    def require(self, condition: str, *values: Any) -> None:
        """Add a condition; each ``%s`` in it becomes the placeholder of the next value."""
        self.where.append(condition % tuple(self.add(v) for v in values))

    def one_of(self, column: str, values: Sequence[Any]) -> None:
        self.where.append(f"{column} IN ({', '.join(self.add(v) for v in values)})")

    def contains(self, column: str, value: str) -> None:
        mark = self.add(value)
        self.where.append(fill(_CONTAINS[self.dialect], column=column, value=mark))

    def statement(self, sql: str, limit: int, **slots: str) -> str:
        """``sql`` with ``{where}`` (every condition, or TRUE) and ``{limit}`` filled."""
        where = " AND ".join(self.where) or "TRUE"
        return fill(sql, where=where, limit=self.add(limit), **slots)


def files(
    dialect: Dialect, account: str, purpose: str | None, after: str | None, desc: bool
) -> Params:
    """An account's files; ``after`` is a file id: the files past it in the listed order."""
    p = Params(dialect)
    p.require("account = %s", account)
    if purpose:
        p.require("purpose = %s", purpose)
    if after:
        # An unknown cursor (-1) lists nothing newest-first and everything oldest-first.
        cmp = "<" if desc else ">"
        p.require(f"seq {cmp} COALESCE((SELECT seq FROM files WHERE id = %s), -1)", after)
    return p


def batches(dialect: Dialect, account: str | None, flt: BatchFilter, after: str | None) -> Params:
    """The list filters of the batches list; ``after`` is a batch id: older batches only."""
    p = Params(dialect)
    if account is not None:
        p.require("account = %s", account)
    if flt.statuses:
        p.one_of("status", [s.value for s in flt.statuses])
    if flt.name_contains:
        p.contains("name_lower", flt.name_contains.lower())
    if flt.input_file_ids:
        p.one_of("input_file_id", flt.input_file_ids)
    for condition, value in (
        ("created_at >= %s", flt.created_after),
        ("created_at <= %s", flt.created_before),
        ("created_at >= %s", flt.not_before),
    ):
        if value is not None:
            p.require(condition, value)
    if after:
        p.require("seq < COALESCE((SELECT seq FROM batches WHERE id = %s), -1)", after)
    return p
