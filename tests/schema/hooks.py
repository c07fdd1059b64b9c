"""schemathesis hooks for ``test_schemathesis.py``. Each shapes the requests schemathesis
generates, for a rule the OpenAPI document can state only in words (JSON Schema has no keyword
for it), or to keep schemathesis from one false positive, named in the hook. None of them drops
a failure.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis
from schemathesis.transport.serialization import Binary


@schemathesis.hook("map_case").apply_to(method="POST", path_regex=r"/files$")
def batch_files_are_text(context: Any, case: Any) -> Any:
    """A ``purpose=batch`` file must be UTF-8; schemathesis fills ``format: binary`` with
    sample PNGs and random bytes."""
    body = case.body
    if not isinstance(body, dict) or body.get("purpose") != "batch":
        return case
    data = body.get("file")
    raw = data.data if isinstance(data, Binary) else data
    if isinstance(raw, bytes):
        text = raw.decode("utf-8", "replace")
        if text.encode() != raw:
            # As text, not bytes: schemathesis checks a changed body against the schema again,
            # and takes bytes for a violation of `type: string`.
            case.body = {**body, "file": text}
    return case


@schemathesis.hook("map_case").apply_to(
    method="POST", path_regex=r"/(files|batches|batches/[^/]+/retry)$"
)
def fresh_idempotency_keys(context: Any, case: Any) -> Any:
    """Each valid request gets an idempotency key of its own.

    A key sent again with the same parameters answers the first response again, by design,
    even if that object has been deleted since; schemathesis, which draws keys from a small
    pool, would take that for "a created resource is missing". Replays are tested in
    ``tests/acceptance/test_keys_retention_idempotency.py``. On a batch create that sends the
    key both ways, both carry the same fresh key (two different keys are a 400).
    """
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return case
    key = uuid.uuid4().hex
    if isinstance((case.headers or {}).get("Idempotency-Key"), str):
        case.headers["Idempotency-Key"] = key
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("idempotency_key"), str):
        case.body = {**body, "idempotency_key": key}
    return case
