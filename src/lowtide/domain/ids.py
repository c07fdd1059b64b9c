"""Id formats (docs/api-compatibility.md, "Ids")."""

from __future__ import annotations

import re
import secrets

BATCH_PREFIX = "batch_"
INPUT_FILE_PREFIX = "file-batch-"
OUTPUT_FILE_PREFIX = "file-batch_output-"
ERROR_FILE_PREFIX = "file-batch_error-"
REQUEST_PREFIX = "batch_req_"

# Ids only ever contain these characters, so a well-formed id can never be a path. The
# OpenAPI document gives the same pattern for every id (ECMA-262 and Python read it alike).
ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)


def new_batch_id() -> str:
    return BATCH_PREFIX + secrets.token_hex(16)


def new_input_file_id() -> str:
    return INPUT_FILE_PREFIX + secrets.token_hex(12)


def new_output_file_id() -> str:
    return OUTPUT_FILE_PREFIX + secrets.token_hex(12)


def new_error_file_id() -> str:
    return ERROR_FILE_PREFIX + secrets.token_hex(12)


def new_request_line_id() -> str:
    return REQUEST_PREFIX + secrets.token_hex(12)


def is_well_formed(some_id: str) -> bool:
    """True if ``some_id`` could be one of ours; anything else is simply not found."""
    return bool(_ID_RE.fullmatch(some_id))
