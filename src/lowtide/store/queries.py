"""The stores' SQL: named statements, one file per dialect, read once.

``sql/<dialect>/queries.sql`` is a list of blocks::

    -- name: claim_validation
    -- What it does and why it is written so (optional comment lines).
    UPDATE batches SET ... WHERE status = {status.validating} ...

Both files define the same names (a test checks it), so a statement added to one dialect and
forgotten in the other fails the tests. Where a dialect does in one statement what the other
needs several for, it declares the names it does not need with an empty body and a reason::

    -- name: record_retry
    -- absent: record_outcomes applies retries in the same statement.

Parameters are numbered in both dialects: ``$1, $2`` in PostgreSQL, ``?1, ?2`` in SQLite, in
the same order for the same name. Nothing in the SQL spells a status or a request state as a
literal: names in braces are filled in when the file is read, from the Python enums:

``{status.in_progress}``   a batch status, as a quoted literal
``{state.leased}``         a request state (``RequestState``), as its number
``{statuses.terminal}``    the terminal statuses as a parenthesised list (``.live``: the others,
                           ``.all``: every status)
``{from.cancelling}``      the statuses a batch may move to ``cancelling`` from
                           (``lowtide.domain.status.MOVES``), as a parenthesised list
``{outcome.retry}``        an outcome kind (``lowtide.domain.work``), as a quoted literal

Lower-case names without a dot (``{where}``, ``{limit}``, ``{values}``) are slots that the
store fills per call (``fill``): the list filters and the size of a multi-row statement.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from lowtide import errors
from lowtide.domain.status import TERMINAL, Status, sources
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, RequestState

Dialect = Literal["sqlite", "postgres"]
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgres")

_BLOCK = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_CONSTANT = re.compile(r"\{(status|state|statuses|from|outcome)\.(\w+)\}")
_SLOT = re.compile(r"\{([a-z_]+)\}")
_ABSENT = "-- absent:"
_OUTCOMES = frozenset({SUCCEEDED, FAILED, RETRY})


@dataclass(frozen=True, slots=True)
class Queries(Mapping[str, str]):
    """The statements of one dialect by name; ``absent`` holds the declared gaps (name ->
    why the dialect does not need the statement)."""

    dialect: Dialect
    statements: Mapping[str, str]
    absent: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        try:
            return self.statements[name]
        except KeyError:
            why = self.absent.get(name)
            detail = f" (declared absent: {why})" if why else ""
            raise KeyError(f"no {self.dialect} statement named {name!r}{detail}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.statements)

    def __len__(self) -> int:
        return len(self.statements)


def _quoted(statuses: list[Status]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def _constant(kind: str, name: str) -> str:
    """The SQL text of ``{kind.name}``; a configuration error names what is unknown."""
    try:
        if kind == "state":
            return str(int(RequestState[name.upper()]))
        if kind == "status":
            return f"'{Status(name).value}'"
        if kind == "outcome" and name in _OUTCOMES:
            return f"'{name}'"
        if kind == "from":
            return _quoted(sources(Status(name)))
        if name == "all":
            return _quoted(list(Status))
        if name == "terminal":
            return _quoted([s for s in Status if s in TERMINAL])
        if name == "live":
            return _quoted([s for s in Status if s not in TERMINAL])
    except (KeyError, ValueError):
        pass
    raise errors.ConfigError(f"unknown constant {{{kind}.{name}}} in the store's SQL")


def substitute(sql: str) -> str:
    """``sql`` with every ``{kind.name}`` constant written out."""
    return _CONSTANT.sub(lambda m: _constant(m[1], m[2]), sql)


def parse(dialect: Dialect, text: str) -> Queries:
    """The named statements of a queries file's ``text`` (constants substituted)."""
    parts = _BLOCK.split(text)
    statements: dict[str, str] = {}
    absent: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements or name in absent:
            raise errors.ConfigError(f"{dialect} statement {name!r} is defined twice")
        lines = body.strip().splitlines()
        sql = [line for line in lines if line.strip() and not line.lstrip().startswith("--")]
        if sql:
            statements[name] = substitute(body.strip())
            continue
        reason = [line.split(_ABSENT, 1)[1].strip() for line in lines if _ABSENT in line]
        if not reason or not reason[0]:
            raise errors.ConfigError(
                f"{dialect} statement {name!r} is empty: write it, or say why with {_ABSENT!r}"
            )
        absent[name] = reason[0]
    return Queries(dialect, statements, absent)


@functools.cache
def load(dialect: Dialect) -> Queries:
    """The statements of ``sql/<dialect>/queries.sql``, read and parsed once per process."""
    path = resources.files("lowtide.store").joinpath(f"sql/{dialect}/queries.sql")
    return parse(dialect, path.read_text(encoding="utf-8"))


def fill(sql: str, **slots: str) -> str:
    """``sql`` with its per-call slots (``{where}``...) filled; every slot must be given."""

    def one(match: re.Match[str]) -> str:
        try:
            return slots[match[1]]
        except KeyError:
            raise KeyError(f"slot {{{match[1]}}} of the statement was not filled") from None

    return _SLOT.sub(one, sql)
