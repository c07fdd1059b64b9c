"""The wire models (``lowtide.domain.wire``) and the request descriptions (``lowtide.api.params``)
without a server: the exact bytes of a batch and a file, the records and the models in step,
the renderer, and the patterns of the document against the parsers they stand for."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import sys
from datetime import datetime
from typing import Literal, NamedTuple

import jsonschema_rs
import orjson
import pytest
from pydantic import BaseModel

from lowtide.api import params
from lowtide.domain import wire
from lowtide.domain.records import BatchRecord, FileRecord, Pricing, Usage
from lowtide.domain.status import Status, parse_statuses
from lowtide.service import batches

# Record fields that are not a key of the object under their own name: what the wire shows
# otherwise (counts, price), or never (owner, storage, internal state).
BATCH_ONLY = {"account", "total", "completed", "failed", "pricing", "output_expires_after"}
BATCH_ONLY |= {"end_status"}
# The pace marks: the wire shows the pace read from them (``lines_per_minute``).
BATCH_ONLY |= {"pace_at", "pace_done", "pace_prev_at", "pace_prev_done"}
FILE_ONLY = {"account", "blob_key"}


def _batch(**changes: object) -> BatchRecord:
    record = BatchRecord(
        id="batch_0123",
        account="alice",
        endpoint="/v1/chat/completions",
        input_file_id="file-batch-1",
        completion_window="24h",
        created_at=1_700_000_000,
        expires_at=1_700_086_400,
        status=Status.IN_PROGRESS,
        metadata={"ds_name": "nightly"},
        model="qwen",
        in_progress_at=1_700_000_005,
        total=10,
        completed=4,
        failed=1,
        usage=Usage(1000, 100, 300, 20),
        pricing=Pricing(input_price=0.8, output_price=2.0, discount=0.5, currency="USD"),
    )
    return record.replace(**changes)


def test_a_batch_is_these_bytes() -> None:
    """The wire contract (docs/api-compatibility.md, "Batch object"): every key, in this order,
    with explicit nulls, then the extensions; an extension added later comes after these."""
    rendered = _batch().to_api()
    known = dict(itertools.islice(rendered.items(), 23))
    assert orjson.dumps(known) == (
        b'{"id":"batch_0123","object":"batch","endpoint":"/v1/chat/completions","errors":null,'
        b'"input_file_id":"file-batch-1","completion_window":"24h","status":"in_progress",'
        b'"output_file_id":null,"error_file_id":null,"created_at":1700000000,'
        b'"in_progress_at":1700000005,"expires_at":1700086400,"finalizing_at":null,'
        b'"completed_at":null,"failed_at":null,"expired_at":null,"cancelling_at":null,'
        b'"cancelled_at":null,"request_counts":{"total":10,"completed":4,"failed":1},'
        b'"metadata":{"ds_name":"nightly"},"model":"qwen","usage":{"input_tokens":1000,'
        b'"input_tokens_details":{"cached_tokens":100},"output_tokens":300,'
        b'"output_tokens_details":{"reasoning_tokens":20},"total_tokens":1300},'
        b'"cost":{"amount":0.0007,"currency":"USD"}}'
    )
    error = {"code": "invalid_request", "message": "m", "param": "input_file_id", "line": None}
    failed = _batch(status=Status.FAILED, errors=[error]).to_api()
    assert failed["errors"] == {"object": "list", "data": [error]}


def test_a_file_is_these_bytes() -> None:
    record = FileRecord("file-batch-1", "alice", "batch", "in.jsonl", 42, 1_700_000_000, "k")
    assert orjson.dumps(record.to_api()) == (
        b'{"id":"file-batch-1","object":"file","bytes":42,"created_at":1700000000,'
        b'"filename":"in.jsonl","purpose":"batch","status":"processed","expires_at":null,'
        b'"status_details":null}'
    )
    assert wire.file_deleted_json(record) == {
        "id": "file-batch-1",
        "object": "file",
        "deleted": True,
    }


@pytest.mark.parametrize(
    ("record", "model", "record_only"),
    [(BatchRecord, wire.Batch, BATCH_ONLY), (FileRecord, wire.File, FILE_ONLY)],
)
def test_every_record_field_is_on_the_wire_or_said_not_to_be(
    record: type, model: type[BaseModel], record_only: set[str]
) -> None:
    """A field added to the record alone is not sent: declare it on the model (one line, and
    the document follows), or name it here as the record's own."""
    fields = {f.name for f in dataclasses.fields(record)}
    assert fields - model.model_fields.keys() == record_only


@pytest.mark.parametrize(
    "record",
    [
        _batch(),
        _batch(status=Status.VALIDATING, metadata=None, model=None, usage=Usage()),
        _batch(
            status=Status.COMPLETED,
            output_file_id="file-batch_output-1",
            error_file_id="file-batch_error-1",
            finalizing_at=1_700_000_100,
            completed_at=1_700_000_200,
        ),
        _batch(
            status=Status.FAILED, errors=[{"code": "c", "message": "m", "param": None, "line": 3}]
        ),
    ],
)
def test_a_rendered_batch_is_a_valid_batch(record: BatchRecord) -> None:
    rendered = record.to_api()
    assert list(rendered) == list(wire.Batch.model_fields)
    wire.Batch.model_validate(rendered, strict=False)
    listed = wire.page_json([rendered], has_more=True)
    assert wire.BatchList.model_validate(listed).first_id == record.id


class _Thing(BaseModel):
    object: Literal["thing"]
    name: str
    size: int
    kind: Literal["a", "b"]


class _Source(NamedTuple):
    name: str
    kind: str
    bytes: int


def test_the_renderer_reads_each_declared_field_in_order() -> None:
    render = wire.renderer(_Thing, size=lambda s: s.bytes * 2)
    assert list(render(_Source("x", "a", 21)).items()) == [
        ("object", "thing"),  # a one-value Literal is that value
        ("name", "x"),  # the source's attribute of the same name
        ("size", 42),  # a getter named for it
        ("kind", "a"),
    ]
    with pytest.raises(TypeError, match="no field"):
        wire.renderer(_Thing, colour=lambda s: "red")
    with pytest.raises(AttributeError):
        wire.renderer(_Thing)(_Source("x", "a", 21))  # no getter and no attribute ``size``


@functools.cache
def _ecma(pattern: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator({"type": "string", "pattern": pattern})


def _matches(pattern: str, value: str) -> bool:
    """Both readings of the pattern: Python's (hypothesis, the parsers) and ECMA-262's."""
    python = re.fullmatch(pattern, value) is not None
    ecma = _ecma(pattern).is_valid(value)
    assert python == ecma, (pattern, value)
    return python


def test_the_completion_window_pattern_is_24h_to_336h_or_1d_to_14d() -> None:
    for n in range(0, 1000):
        assert _matches(batches.WINDOW_PATTERN, f"{n}h") == (24 <= n <= 336), n
        assert _matches(batches.WINDOW_PATTERN, f"{n}d") == (1 <= n <= 14), n
        assert not _matches(batches.WINDOW_PATTERN, f"0{n}h")


def test_the_time_pattern_is_every_real_moment() -> None:
    for year in (999, 1000, 1900, 2000, 2023, 2024, 2100, 2400, 9999):
        for month in range(0, 14):
            for day in range(0, 33):
                for clock in ("000000", "235959", "240000", "006000", "000060"):
                    text = f"{year:04d}{month:02d}{day:02d}{clock}"
                    try:
                        real = datetime.strptime(text, "%Y%m%d%H%M%S").year >= 1000
                    except ValueError:
                        real = False
                    assert _matches(batches.TIME_PATTERN, text) == real, text
    assert _matches(batches.TIME_PATTERN, "")
    assert not _matches(batches.TIME_PATTERN, "2024010100000")


def test_python_knows_no_blank_outside_the_basic_plane() -> None:
    """``lowtide.api.params`` looks for what ``str.strip()`` removes in the BMP only."""
    assert not any(chr(c).isspace() for c in range(0x10000, sys.maxunicode + 1))


def test_the_status_pattern_is_what_parse_statuses_takes() -> None:
    pieces = [",", " ", "\x1c", "\x85", "\u3000", "\ufeff", "completed", "failed", "Failed"]
    values = [a + b + c for a in pieces for b in pieces for c in pieces]
    for value in values:
        try:
            parse_statuses(value)
            taken = True
        except ValueError:
            taken = False
        assert _matches(params.STATUSES_PATTERN, value) == taken, value


@pytest.mark.parametrize("pattern", [params.STATUSES_PATTERN, params.FILE_IDS_PATTERN])
def test_the_list_patterns_take_linear_time(pattern: str) -> None:
    """Long values that make a pattern with nested or neighbouring quantifiers backtrack for
    hours in Python's ``re`` (21 items of 3 characters were enough): here, a moment each."""
    for value in (",".join(["abc"] * 21), " " * 20_000 + "x", " ," * 5000 + "x"):
        _matches(pattern, value)
