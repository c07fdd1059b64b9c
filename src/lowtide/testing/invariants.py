"""Check a batch against the durability invariants (docs/reliability.md, "What is promised"),
from its files and database.

Given the input JSONL, the output and error files, the batch object (as the API returns it) and
the SQLite database, ``check_batch`` says which lines were lost, duplicated, torn, or billed
more than once. Shared by the acceptance tests and the chaos and fault scripts, so that all of
them judge a run the same way::

    report = check_batch(input_bytes, output_text, error_text, batch.model_dump(), db_path)
    assert report.ok, report.problems

Billing is checked three ways: the batch's counters against the lines of the output file, the
batch's ``usage`` against the sum of those lines' ``usage``, and (with the database) the
counters against the ``requests`` rows, which must hold exactly one terminal row per line.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["Report", "Tokens", "batch_tokens", "check_batch", "line_tokens", "parse_jsonl"]

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
# RequestState values in the requests table (lowtide.domain.work); copied, not imported, so
# that the checker judges the database by its documented schema rather than by the code.
_SUCCEEDED: Final = 2
_FAILED: Final = 3


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts, as a batch's ``usage`` or one output line's ``usage`` carries them."""

    input: int = 0
    output: int = 0
    cached: int = 0
    reasoning: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.output + other.output,
            self.cached + other.cached,
            self.reasoning + other.reasoning,
        )

    def __sub__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input - other.input,
            self.output - other.output,
            self.cached - other.cached,
            self.reasoning - other.reasoning,
        )

    def is_zero(self) -> bool:
        return self == Tokens()


@dataclass(frozen=True, slots=True)
class Report:
    """What ``check_batch`` found. ``ok`` is true when no invariant is broken."""

    batch_id: str
    status: str
    input_lines: int
    output_lines: int
    error_lines: int
    #: custom_ids of the input with no line in either result file
    lost: tuple[str, ...] = ()
    #: custom_ids with more than one line across the two result files
    duplicated: tuple[str, ...] = ()
    #: result lines whose custom_id is not in the input
    unexpected: tuple[str, ...] = ()
    #: result lines that are not a JSON object with a custom_id
    torn: int = 0
    #: lines counted as completed (so billed) beyond the lines of the output file
    double_billed: int = 0
    #: the batch's usage minus the sum of the output lines' usage (zero when billed once)
    billed_minus_lines: Tokens = Tokens()
    #: every broken invariant, in words
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_jsonl(data: bytes | str) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSONL text, and how many non-blank lines were not objects."""
    raw = data.encode() if isinstance(data, str) else data
    objects: list[dict[str, Any]] = []
    bad = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict):
            objects.append(value)
        else:
            bad += 1
    return objects, bad


def line_tokens(body: object) -> Tokens:
    """The usage of one backend answer (chat, completions, responses or embeddings shape)."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Tokens()
    details_in = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    details_out = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    return Tokens(
        input=_count(usage.get("prompt_tokens", usage.get("input_tokens"))),
        output=_count(usage.get("completion_tokens", usage.get("output_tokens"))),
        cached=_count(details_in.get("cached_tokens") if isinstance(details_in, dict) else 0),
        reasoning=_count(
            details_out.get("reasoning_tokens") if isinstance(details_out, dict) else 0
        ),
    )


def batch_tokens(batch: Mapping[str, Any]) -> Tokens:
    """The ``usage`` object of a batch, as tokens."""
    usage = batch.get("usage") or {}
    details_in = usage.get("input_tokens_details") or {}
    details_out = usage.get("output_tokens_details") or {}
    return Tokens(
        input=_count(usage.get("input_tokens")),
        output=_count(usage.get("output_tokens")),
        cached=_count(details_in.get("cached_tokens")),
        reasoning=_count(details_out.get("reasoning_tokens")),
    )


def check_batch(
    input_jsonl: bytes | str,
    output: bytes | str,
    errors: bytes | str,
    batch: Mapping[str, Any],
    db_path: Path | None = None,
) -> Report:
    """Check one terminal batch; ``batch`` is the API object (``batch.model_dump()``)."""
    inputs, _ = parse_jsonl(input_jsonl)
    wanted = [str(line.get("custom_id")) for line in inputs]
    outs, torn_out = parse_jsonl(output)
    errs, torn_err = parse_jsonl(errors)
    status = str(batch.get("status"))
    counts = batch.get("request_counts") or {}
    validated = not (status == "failed" and int(counts.get("total") or 0) == 0)
    expected = wanted if validated else []
    problems: list[str] = []
    lost, duplicated, unexpected = _accounting(expected, outs + errs, problems)
    torn = torn_out + torn_err + sum(1 for r in outs + errs if "custom_id" not in r)
    if torn:
        problems.append(f"{torn} torn result lines (not a JSON object with a custom_id)")
    if status not in TERMINAL:
        problems.append(f"batch is {status!r}, not terminal")
    _check_order(expected, outs, "output", problems)
    _check_order(expected, errs, "error", problems)
    _check_counts(counts, len(expected), len(outs), len(errs), problems)
    billed_minus = batch_tokens(batch) - sum((line_tokens(_body(r)) for r in outs), Tokens())
    if not billed_minus.is_zero():
        problems.append(f"batch usage minus the output lines' usage is {billed_minus}")
    if db_path is not None:
        problems.extend(_check_database(db_path, str(batch["id"]), expected, len(outs), validated))
    return Report(
        batch_id=str(batch.get("id")),
        status=status,
        input_lines=len(expected),
        output_lines=len(outs),
        error_lines=len(errs),
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        torn=torn,
        double_billed=max(0, int(counts.get("completed") or 0) - len(outs)),
        billed_minus_lines=billed_minus,
        problems=tuple(problems),
    )


# ------------------------------------------------------------------------ the result files


def _accounting(
    expected: list[str], results: list[dict[str, Any]], problems: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    seen = Counter(str(r.get("custom_id")) for r in results if "custom_id" in r)
    wanted = set(expected)
    lost = tuple(cid for cid in expected if cid not in seen)
    duplicated = tuple(sorted(cid for cid, n in seen.items() if n > 1))
    unexpected = tuple(sorted(cid for cid in seen if cid not in wanted))
    for name, ids in (("lost", lost), ("duplicated", duplicated), ("unexpected", unexpected)):
        if ids:
            problems.append(f"{len(ids)} lines {name}, e.g. {list(ids[:5])}")
    return lost, duplicated, unexpected


def _check_order(
    expected: list[str], results: list[dict[str, Any]], name: str, out: list[str]
) -> None:
    # Result files are written in input-line order, so a rerun writes the same bytes.
    position = {cid: i for i, cid in enumerate(expected)}
    order = [position[c] for r in results if (c := str(r.get("custom_id"))) in position]
    if order != sorted(order):
        out.append(f"the {name} file is not in input-line order")


def _check_counts(
    counts: Mapping[str, Any], total: int, outs: int, errs: int, problems: list[str]
) -> None:
    got = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
    have_total, completed, failed = got
    if have_total != total:
        problems.append(f"request_counts.total is {have_total}, the input has {total} lines")
    if completed + failed != have_total:
        problems.append(f"completed + failed = {completed + failed} != total {have_total}")
    if completed != outs:
        problems.append(f"request_counts.completed is {completed}, the output file has {outs}")
    if failed != errs:
        problems.append(f"request_counts.failed is {failed}, the error file has {errs}")


def _body(result: Mapping[str, Any]) -> object:
    response = result.get("response")
    return response.get("body") if isinstance(response, dict) else None


# ------------------------------------------------------------------------ the database


def _check_database(
    db_path: Path, batch_id: str, expected: list[str], outs: int, validated: bool
) -> list[str]:
    problems: list[str] = []
    # Read-only, so a checker can never change what it judges, even with the server running.
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        batch = conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if batch is None:
            return [f"batch {batch_id} is not in the database"]
        rows = conn.execute(
            "SELECT line, custom_id, state, result FROM requests WHERE batch_id = ? ORDER BY line",
            (batch_id,),
        ).fetchall()
    if not validated:
        return [f"{len(rows)} request rows for a batch that failed validation"] if rows else []
    states = Counter(int(row["state"]) for row in rows)
    unfinished = len(rows) - states[_SUCCEEDED] - states[_FAILED]
    if unfinished:
        problems.append(f"{unfinished} request rows are not terminal")
    if [row["custom_id"] for row in rows] != expected:
        problems.append(f"the requests table has {len(rows)} rows, not one per input line")
    if states[_SUCCEEDED] != outs:
        problems.append(f"{states[_SUCCEEDED]} succeeded rows, {outs} output lines")
    if int(batch["completed"]) != states[_SUCCEEDED] or int(batch["failed"]) != states[_FAILED]:
        problems.append("the batch's counters disagree with its request rows")
    # Each row keeps its result line: the tokens billed must be those of the answers in them.
    succeeded = (_loads(row["result"]) for row in rows if int(row["state"]) == _SUCCEEDED)
    in_rows = sum(
        (line_tokens(_body(r) if isinstance(r, dict) else None) for r in succeeded), Tokens()
    )
    billed = Tokens(
        int(batch["input_tokens"]),
        int(batch["output_tokens"]),
        int(batch["cached_tokens"]),
        int(batch["reasoning_tokens"]),
    )
    if billed != in_rows:
        problems.append(f"billed tokens minus the request rows' tokens is {billed - in_rows}")
    return problems


def _loads(body: bytes | str | None) -> object:
    if body is None:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
