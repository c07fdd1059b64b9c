"""Validation of a batch input file, pure and streaming (docs/api-compatibility.md,
"Validation codes").

The engine feeds the bytes of an uploaded JSONL file in chunks of any size and calls ``finish``::

    validator = Validator(endpoint, served_models)
    for chunk in chunks:
        validator.feed(chunk)
    result = validator.finish()   # result.requests, or result.errors when not result.ok

Each line gets at most one error, the first problem found in the order of point 8. The validator
keeps only the current partial line (never more than ``max_line_bytes + 1`` of it), the custom_ids
seen and the list of ``RequestLine``; lines past the line limit are still checked, but neither
stored nor remembered, so memory stays bounded by the limits whatever the file holds.

``checks`` holds the steps and the problems they report, ``results`` what validation gives (and
the limits it works to), ``validator`` the streaming validator that runs the steps line by line.
"""

from __future__ import annotations

from lowtide.domain.validation.checks import ENDPOINTS, TEST_ENDPOINT, TEST_MODEL
from lowtide.domain.validation.results import BatchError, Limits, RequestLine, Validation
from lowtide.domain.validation.validator import Validator

__all__ = [
    "ENDPOINTS",
    "TEST_ENDPOINT",
    "TEST_MODEL",
    "BatchError",
    "Limits",
    "RequestLine",
    "Validation",
    "Validator",
]
