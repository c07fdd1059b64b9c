"""What the API reads: the create-batch body, the upload form, the list filters, the ids.

These models only describe; the OpenAPI document (``lowtide.api.openapi``) is generated from
them. The routes read their bodies themselves, and ``lowtide.service`` checks them, to stream
uploads and to word every refusal as the hosted APIs do (docs/api-compatibility.md, "Create
batch", "Validation codes", "Errors"). Every limit below is the service's own constant, and
every pattern is either the one its parser matches or derived from what the parser does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Path, Request
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from lowtide import errors
from lowtide.domain import controls
from lowtide.domain.ids import ID_PATTERN
from lowtide.domain.status import Status
from lowtide.domain.validation import ENDPOINTS
from lowtide.service import batches
from lowtide.service.files import EXPIRY_SECONDS, UPLOAD_PURPOSES
from lowtide.service.idempotency import MAX_KEY_LENGTH

#: The largest JSON body a route reads (uploads are multipart, streamed, and not read here).
MAX_JSON_BODY = 1 << 20


async def read_json_body(request: Request, *, required: bool = True) -> Any:
    """The request's JSON body, read within ``MAX_JSON_BODY``; an empty one is None when the
    route may do without it. Refusals are worded as the OpenAI API words them."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY:
            raise errors.PayloadTooLarge("The request body is too large.", code="body_too_large")
    if not body.strip() and not required:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest(
            "We could not parse the JSON body of your request. The OpenAI API expects a JSON "
            "payload.",
            code="invalid_json",
        ) from None


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _optional(**kwargs: Any) -> Any:
    """A field that may be left out but is never null (a query parameter, a form field): the
    document gives it no default."""
    return Field(None, json_schema_extra=_no_default, **kwargs)


# ------------------------------------------------------------------------- create a batch


class OutputExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=batches.OUTPUT_EXPIRY_SECONDS[0], le=batches.OUTPUT_EXPIRY_SECONDS[1])


_ds_limits: dict[str, Any] = {
    key: {"type": "string", "maxLength": limit} for key, limit in batches.METADATA_LIMITS.items()
}
_ds_limits["ds_batch_finish_callback"] = {
    "type": "string",
    "maxLength": batches.METADATA_MAX_VALUE,
    "description": "POSTed the final batch, to allowed hosts only.",
}
Metadata = Annotated[
    dict[
        Annotated[str, Field(max_length=batches.METADATA_MAX_KEY)],
        Annotated[str, Field(max_length=batches.METADATA_MAX_VALUE)],
    ],
    # A dict type cannot name keys: the keys with shorter limits are added by hand.
    Field(max_length=batches.METADATA_MAX_PAIRS, json_schema_extra={"properties": _ds_limits}),
]


class BatchCreate(BaseModel):
    """The body of `POST /batches`."""

    input_file_id: str = Field(
        description="A `purpose=batch` file of this account; any other id makes the batch fail "
        "in `validating`, not the call."
    )
    endpoint: Annotated[str, WithJsonSchema({"enum": list(ENDPOINTS)})]
    completion_window: str = Field(
        pattern=batches.WINDOW_PATTERN,
        description="Whole hours or days, from `24h` (`1d`) to `336h` (`14d`).",
    )
    metadata: Metadata | None = None
    idempotency_key: str | None = Field(
        None,
        pattern=f"^[ -~]{{1,{MAX_KEY_LENGTH}}}$",
        description="The `Idempotency-Key` header's alternative, for clients that can only add "
        "body fields; both given must agree.",
    )
    output_expires_after: OutputExpiresAfter | None = None
    # The batch controls (lowtide's extensions, docs/extensions.md; ``extra_body`` in the SDK).
    priority: int | None = Field(
        None,
        ge=controls.PRIORITY_RANGE[0],
        le=controls.PRIORITY_RANGE[1],
        description="Higher is served first, unless another batch's deadline is near (0 by "
        "default).",
    )
    max_cost: float | None = Field(
        None, gt=0, description="Stop the batch once its cost reaches this (`cost.currency`)."
    )
    max_error_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Stop the batch once more than this share of its ended lines failed "
        f"(judged from {controls.ERROR_RATE_MIN_LINES} ended lines).",
    )


class BatchEstimateRequest(BaseModel):
    """The body of `POST /batches/estimate`."""

    input_file_id: str = Field(description="A `purpose=batch` file of this account.")
    endpoint: Annotated[str, WithJsonSchema({"enum": list(ENDPOINTS)})]


class BatchRetry(BaseModel):
    """The body of `POST /batches/{batch_id}/retry` (optional): which failed lines, and the
    controls that differ from the original batch's."""

    codes: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Retry only the lines whose error has one of these codes.",
    )
    priority: int | None = Field(None, ge=controls.PRIORITY_RANGE[0], le=controls.PRIORITY_RANGE[1])
    max_cost: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    idempotency_key: str | None = Field(None, pattern=f"^[ -~]{{1,{MAX_KEY_LENGTH}}}$")


class ResultsQuery(BaseModel):
    """The query of `GET /batches/{batch_id}/results`."""

    kind: Literal["all", "output", "errors"] = Field(
        "all", description="Output lines, error lines, or both."
    )
    after: int = Field(0, ge=0, le=9_999_999_999, description="Only lines after this one.")
    contiguous: Literal["true", "false"] = Field(
        "false",
        description="Only up to the first line with no result yet: then `after` = the last "
        "`Lowtide-Last-Line` never gives a line twice.",
    )


# ------------------------------------------------------------------------- upload a file


class FileUpload(BaseModel):
    """The multipart form of `POST /files`."""

    model_config = ConfigDict(
        json_schema_extra={
            "dependentRequired": {
                "expires_after[anchor]": ["expires_after[seconds]"],
                "expires_after[seconds]": ["expires_after[anchor]"],
            }
        }
    )

    file: bytes = Field(
        description="The file; UTF-8 JSONL for `purpose=batch`. Its name is kept only as a "
        "label, never as a path."
    )
    purpose: Annotated[str, WithJsonSchema({"enum": sorted(UPLOAD_PURPOSES)})]
    expires_after_anchor: Literal["created_at"] = _optional(alias="expires_after[anchor]")
    expires_after_seconds: int = _optional(
        alias="expires_after[seconds]", ge=EXPIRY_SECONDS[0], le=EXPIRY_SECONDS[1]
    )


# ------------------------------------------------------------------------- list batches

# What ``str.strip()`` removes, which is wider than a regex's ``\s`` (U+001C to U+001F, U+0085).
# Python knows no blank outside the Basic Multilingual Plane.
_BLANKS = [c for c in map(chr, range(0x10000)) if c.isspace()]


def _char_class(chars: list[str], negated: bool = False) -> str:
    """A character class of ``chars`` in ``\\uXXXX`` escapes, which Python, ECMA-262 and
    Rust's regex all read; runs of code points as ranges."""
    runs: list[list[int]] = []
    for point in sorted(map(ord, chars)):
        if runs and runs[-1][1] == point - 1:
            runs[-1][1] = point
        else:
            runs.append([point, point])
    body = "".join(
        f"\\u{low:04x}" + (f"-\\u{high:04x}" if high > low else "") for low, high in runs
    )
    return f"[{'^' if negated else ''}{body}]"


# The two list patterns are derived from what ``BatchService`` does with the text (split at
# commas, strip each item, drop the empty ones), and written so that no backtracking engine
# takes more than linear time on them: each blank is the leading one of its item.
_BLANK = _char_class(_BLANKS) + "*"
_STATUS = "(?:" + "|".join(s.value for s in Status) + ")"
STATUSES_PATTERN = f"^{_BLANK}(?:{_STATUS}{_BLANK})?(?:,{_BLANK}(?:{_STATUS}{_BLANK})?)*$"
_FILE_ID = f"{_BLANK}{_char_class([',', *_BLANKS], negated=True)}[^,]*"
FILE_IDS_PATTERN = (
    f"^(?:{_BLANK},)*(?:{_FILE_ID}(?:(?:,{_BLANK})*,{_FILE_ID}){{0,"
    f"{batches.MAX_INPUT_FILE_IDS - 1}}}(?:,{_BLANK})*|{_BLANK})$"
)


class BatchListQuery(BaseModel):
    """The query of `GET /batches`: each field is one optional parameter."""

    after: str = _optional(description="A batch id: the page holds older batches.")
    limit: int = Field(
        batches.LIST_LIMIT[2],
        ge=batches.LIST_LIMIT[0],
        le=batches.LIST_LIMIT[1],
        description="Page size.",
    )
    status: str = _optional(pattern=STATUSES_PATTERN, description="Comma-separated statuses.")
    ds_name: str = _optional(description="Case-insensitive part of `metadata.ds_name`.")
    input_file_ids: str = _optional(
        pattern=FILE_IDS_PATTERN,
        description=f"At most {batches.MAX_INPUT_FILE_IDS} comma-separated input file ids.",
    )
    create_after: str = _optional(
        pattern=batches.TIME_PATTERN,
        description="yyyyMMddHHmmss in the server's time zone, inclusive.",
    )
    create_before: str = _optional(
        pattern=batches.TIME_PATTERN,
        description="yyyyMMddHHmmss in the server's time zone, inclusive.",
    )


# ------------------------------------------------------------------------- path parameters

# The id pattern is documented but not checked here: an id that is not well formed is simply
# not found (404), as any unknown id.
FileId = Annotated[
    str, Path(description="The file's id.", json_schema_extra={"pattern": ID_PATTERN})
]
BatchId = Annotated[
    str, Path(description="The batch's id.", json_schema_extra={"pattern": ID_PATTERN})
]
