"""The OpenAPI description served at ``/openapi.json``: FastAPI's document, completed by hand.

The routes read their JSON and multipart bodies themselves (to stream uploads and to word every
error exactly as the hosted APIs do), so FastAPI sees neither the request bodies, nor the error
answers, nor the Bearer scheme. This module adds them by path and method, so that the document
is complete enough for generated clients and for schemathesis (``tests/schema``), which checks
every documented status, schema and link against the running server.

The routes under ``/compatible-mode/v1`` are the same routers as under ``/v1`` (the base URL
that Model Studio clients use): both are described, neither is deprecated, and the
compatible-mode operations carry the ``CompatibleMode`` suffix on their operation ids.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lowtide.domain.status import Status
from lowtide.domain.validation import ENDPOINTS
from lowtide.service.files import UPLOAD_PURPOSES
from lowtide.service.idempotency import HEADER as IDEMPOTENCY_HEADER
from lowtide.service.idempotency import MAX_KEY_LENGTH

Json = dict[str, Any]

_COMPAT_SUFFIX = "CompatibleMode"
_ERROR_DESCRIPTIONS = {
    400: "The request is invalid (bad parameter, malformed body, a body on a read).",
    401: "No API key, or an unknown one.",
    403: "The account's storage quota is used up (code `quota_exceeded`).",
    404: "No such object in this account (another account's ids answer 404 too).",
    405: "The method is not allowed on this path; `Allow` lists the methods that are.",
    409: "The request conflicts with the object's state, or an idempotency key was used "
    "before with other parameters.",
    413: "The request body is too large (1 MiB, or `limits.max_file_bytes` for a file).",
    415: "The body is not of the media type this operation reads.",
    429: "A rate limit (or the test model's live-batch limit) was reached.",
    503: "The database or the storage does not answer.",
    507: "The storage is full; try again later.",
}
# Ids only ever hold these characters (``lowtide.domain.ids``); anything else is a 404.
_ID_PATTERN = "^[A-Za-z0-9_-]{1,128}$"
# ``completion_window``: 24h to 336h, or 1d to 14d, without leading zeros.
_WINDOW_PATTERN = "^((2[4-9]|[3-9][0-9]|[12][0-9]{2}|3[0-2][0-9]|33[0-6])h|([1-9]|1[0-4])d)$"
# What Python's ``str.strip()`` removes: wider than a regex's ``\s`` (U+001C to U+001F, U+0085).
_PY_SPACE = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# ``create_after`` / ``create_before``: yyyyMMddHHmmss (a real date: no 30 February), or empty.
_LEAP_YEAR = "([1-9][0-9](0[48]|[2468][048]|[13579][26])|([2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])"  # any month, days 1 to 28
    "|(0[13-9]|1[0-2])(29|30)"  # every month but February
    "|(0[13578]|1[02])31"
)
_TIME_PATTERN = (
    f"^(([1-9][0-9]{{3}}({_MONTH_DAY})|{_LEAP_YEAR}0229)([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9])?$"
)
_STATUS = "(" + "|".join(s.value for s in Status) + ")"
# ``status``: comma-separated statuses; blanks around them and empty items are ignored.
_STATUSES_PATTERN = f"^{_PY_SPACE}*{_STATUS}?{_PY_SPACE}*(,{_PY_SPACE}*{_STATUS}?{_PY_SPACE}*)*$"
# ``input_file_ids``: comma-separated, at most 20 of them that are not blank.
_BLANK_ITEM = f"{_PY_SPACE}*"
_ID_ITEM = f"[^,]*[^,{_PY_SPACE[1:-1]}][^,]*"
_FILE_IDS_PATTERN = (
    f"^({_BLANK_ITEM},)*"
    f"({_ID_ITEM}((,{_BLANK_ITEM})*,{_ID_ITEM}){{0,19}}(,{_BLANK_ITEM})*|{_BLANK_ITEM})$"
)


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Json) -> Json:
    return {"anyOf": [schema, {"type": "null"}]}


_INT = {"type": "integer"}
_TIMESTAMP = {"type": "integer", "description": "Unix seconds."}
_STRING = {"type": "string"}

SCHEMAS: dict[str, Json] = {
    "Error": {
        "type": "object",
        "description": "The OpenAI error envelope, used by every error answer.",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": _STRING,
                    "type": {"type": "string", "examples": ["invalid_request_error"]},
                    "param": _nullable(_STRING),
                    "code": _nullable(_STRING),
                },
            }
        },
    },
    "File": {
        "type": "object",
        "required": [
            "id",
            "object",
            "bytes",
            "created_at",
            "filename",
            "purpose",
            "status",
            "expires_at",
            "status_details",
        ],
        "properties": {
            "id": {"type": "string", "pattern": _ID_PATTERN},
            "object": {"const": "file"},
            "bytes": {"type": "integer", "minimum": 0},
            "created_at": _TIMESTAMP,
            "filename": _STRING,
            "purpose": {
                "type": "string",
                "description": "An upload purpose, or `batch_output` for result files.",
            },
            "status": {"enum": ["uploaded", "processed", "error"]},
            "expires_at": _nullable(_TIMESTAMP),
            "status_details": _nullable(_STRING),
        },
    },
    "FileDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": _STRING,
            "object": {"const": "file"},
            "deleted": {"const": True},
        },
    },
    "BatchError": {
        "type": "object",
        "required": ["code", "message", "param", "line"],
        "properties": {
            "code": _STRING,
            "message": _STRING,
            "param": _nullable(_STRING),
            "line": _nullable({"type": "integer", "minimum": 1}),
        },
    },
    "Usage": {
        "type": "object",
        "required": [
            "input_tokens",
            "input_tokens_details",
            "output_tokens",
            "output_tokens_details",
            "total_tokens",
        ],
        "properties": {
            "input_tokens": _INT,
            "input_tokens_details": {
                "type": "object",
                "required": ["cached_tokens"],
                "properties": {"cached_tokens": _INT},
            },
            "output_tokens": _INT,
            "output_tokens_details": {
                "type": "object",
                "required": ["reasoning_tokens"],
                "properties": {"reasoning_tokens": _INT},
            },
            "total_tokens": _INT,
        },
    },
    "Batch": {
        "type": "object",
        "required": [
            "id",
            "object",
            "endpoint",
            "errors",
            "input_file_id",
            "completion_window",
            "status",
            "output_file_id",
            "error_file_id",
            "created_at",
            "in_progress_at",
            "expires_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
            "request_counts",
            "metadata",
            "model",
            "usage",
            "cost",
        ],
        "properties": {
            "id": {"type": "string", "pattern": _ID_PATTERN},
            "object": {"const": "batch"},
            "endpoint": _STRING,
            "errors": _nullable(
                {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": _ref("BatchError")},
                    },
                }
            ),
            "input_file_id": _STRING,
            "completion_window": _STRING,
            "status": {"enum": [s.value for s in Status]},
            "output_file_id": _nullable(_STRING),
            "error_file_id": _nullable(_STRING),
            "created_at": _TIMESTAMP,
            "in_progress_at": _nullable(_TIMESTAMP),
            "expires_at": _TIMESTAMP,
            "finalizing_at": _nullable(_TIMESTAMP),
            "completed_at": _nullable(_TIMESTAMP),
            "failed_at": _nullable(_TIMESTAMP),
            "expired_at": _nullable(_TIMESTAMP),
            "cancelling_at": _nullable(_TIMESTAMP),
            "cancelled_at": _nullable(_TIMESTAMP),
            "request_counts": {
                "type": "object",
                "required": ["total", "completed", "failed"],
                "properties": {"total": _INT, "completed": _INT, "failed": _INT},
            },
            "metadata": _nullable({"type": "object", "additionalProperties": _STRING}),
            "model": _nullable(_STRING),
            "usage": _ref("Usage"),
            "cost": {
                "type": "object",
                "description": "The cost so far at the batch price (a lowtide extension).",
                "required": ["amount", "currency"],
                "properties": {"amount": {"type": "number"}, "currency": _STRING},
            },
        },
    },
    "BatchCreate": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "properties": {
            "input_file_id": {
                "type": "string",
                "description": "A `purpose=batch` file of this account; any other id makes "
                "the batch fail in `validating`, not the call.",
            },
            "endpoint": {"enum": list(ENDPOINTS)},
            "completion_window": {
                "type": "string",
                "pattern": _WINDOW_PATTERN,
                "description": "Whole hours or days, from `24h` (`1d`) to `336h` (`14d`).",
            },
            "metadata": _nullable(
                {
                    "type": "object",
                    "maxProperties": 16,
                    "propertyNames": {"maxLength": 64},
                    "additionalProperties": {"type": "string", "maxLength": 512},
                    "properties": {
                        "ds_name": {"type": "string", "maxLength": 100},
                        "ds_description": {"type": "string", "maxLength": 200},
                        "ds_batch_finish_callback": {
                            "type": "string",
                            "maxLength": 512,
                            "description": "POSTed the final batch, to allowed hosts only.",
                        },
                    },
                }
            ),
            "idempotency_key": _nullable(
                {
                    "type": "string",
                    "pattern": f"^[ -~]{{1,{MAX_KEY_LENGTH}}}$",
                    "description": "The `Idempotency-Key` header's alternative, for clients "
                    "that can only add body fields; both given must agree.",
                }
            ),
            "output_expires_after": _nullable(
                {
                    "type": "object",
                    "required": ["anchor", "seconds"],
                    "properties": {
                        "anchor": {"const": "created_at"},
                        "seconds": {"type": "integer", "minimum": 3600, "maximum": 2_592_000},
                    },
                }
            ),
        },
    },
    "FileUpload": {
        "type": "object",
        "required": ["file", "purpose"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "The file; UTF-8 JSONL for `purpose=batch`. Its name is kept "
                "only as a label, never as a path.",
            },
            "purpose": {"enum": sorted(UPLOAD_PURPOSES)},
            "expires_after[anchor]": {"const": "created_at"},
            "expires_after[seconds]": {
                "type": "integer",
                "minimum": 3600,
                "maximum": 2_592_000,
            },
        },
        "dependentRequired": {
            "expires_after[anchor]": ["expires_after[seconds]"],
            "expires_after[seconds]": ["expires_after[anchor]"],
        },
    },
}


def _list_of(item: str) -> Json:
    return {
        "type": "object",
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(item)},
            "first_id": _nullable(_STRING),
            "last_id": _nullable(_STRING),
            "has_more": {"type": "boolean"},
        },
    }


SCHEMAS["FileList"] = _list_of("File")
SCHEMAS["BatchList"] = _list_of("Batch")

_ERROR_HEADERS: dict[int, Json] = {
    401: {"WWW-Authenticate": {"schema": {"const": "Bearer"}, "required": True}},
    405: {"Allow": {"schema": _STRING, "required": True}},
    429: {
        "Retry-After": {
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            "required": True,
            "description": "Seconds to wait before trying again.",
        }
    },
}


def _error_response(status: int) -> Json:
    response: Json = {
        "description": _ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status in _ERROR_HEADERS:
        response["headers"] = _ERROR_HEADERS[status]
    return response


def _json_response(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_id(name: str, what: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}'s id.",
        "schema": {"type": "string", "pattern": _ID_PATTERN},
    }


# Printable ASCII; HTTP drops the blanks around a header value, so none may stand there.
_IDEMPOTENCY_KEY = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "The same key with the same parameters within 24 hours answers the first "
    "response again; with other parameters, 409.",
    "schema": {
        "type": "string",
        "pattern": f"^[!-~]([ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$",
    },
}


def _query(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


@dataclass(frozen=True, slots=True)
class _Operation:
    """What FastAPI cannot see of one operation, keyed by method and path below the prefix."""

    operation_id: str
    ok: Json
    errors: tuple[int, ...]
    parameters: list[Json] = field(default_factory=list)
    body: Json | None = None
    #: Link name to (target operation id, parameters, request body).
    links: dict[str, tuple[str, Json, Json | None]] = field(default_factory=dict)


_FILE_LINKS: dict[str, tuple[str, Json, Json | None]] = {
    "RetrieveFile": ("retrieveFile", {"file_id": "$response.body#/id"}, None),
    "DownloadFile": ("downloadFile", {"file_id": "$response.body#/id"}, None),
    "DeleteFile": ("deleteFile", {"file_id": "$response.body#/id"}, None),
    "CreateBatch": (
        "createBatch",
        {},
        {
            "input_file_id": "$response.body#/id",
            "endpoint": "/v1/chat/ds-test",
            "completion_window": "24h",
        },
    ),
}
_BATCH_LINKS: dict[str, tuple[str, Json, Json | None]] = {
    "RetrieveBatch": ("retrieveBatch", {"batch_id": "$response.body#/id"}, None),
    "CancelBatch": ("cancelBatch", {"batch_id": "$response.body#/id"}, None),
}
# Every authenticated operation may answer 400 (a body on a read, a malformed request),
# 401 and 429; the rest depends on what it does.
OPERATIONS: dict[tuple[str, str], _Operation] = {
    ("post", "/files"): _Operation(
        "createFile",
        ok=_json_response("The stored file.", _ref("File")),
        errors=(400, 401, 403, 409, 413, 415, 429, 507),
        parameters=[_IDEMPOTENCY_KEY],
        body={
            "required": True,
            "content": {"multipart/form-data": {"schema": _ref("FileUpload")}},
        },
        links=_FILE_LINKS,
    ),
    ("get", "/files"): _Operation(
        "listFiles",
        ok=_json_response("One page of the account's files.", _ref("FileList")),
        errors=(400, 401, 429),
        parameters=[
            _query("purpose", _STRING, "Only files of this purpose."),
            _query("after", _STRING, "A file id: the page starts after it."),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 10_000},
                "Page size.",
            ),
            _query("order", {"enum": ["asc", "desc"], "default": "desc"}, "By creation time."),
        ],
    ),
    ("get", "/files/{file_id}"): _Operation(
        "retrieveFile",
        ok=_json_response("The file.", _ref("File")),
        errors=(400, 401, 404, 429),
        parameters=[_path_id("file_id", "file")],
    ),
    ("get", "/files/{file_id}/content"): _Operation(
        "downloadFile",
        ok={
            "description": "The file's bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "headers": {
                "Content-Disposition": {"schema": _STRING, "required": True},
            },
        },
        errors=(400, 401, 404, 429),
        parameters=[_path_id("file_id", "file")],
    ),
    ("delete", "/files/{file_id}"): _Operation(
        "deleteFile",
        ok=_json_response("The file is deleted.", _ref("FileDeleted")),
        errors=(400, 401, 404, 429),
        parameters=[_path_id("file_id", "file")],
    ),
    ("post", "/batches"): _Operation(
        "createBatch",
        ok=_json_response("The batch, in `validating`.", _ref("Batch")),
        errors=(400, 401, 409, 413, 429, 507),
        parameters=[_IDEMPOTENCY_KEY],
        body={
            "required": True,
            "content": {"application/json": {"schema": _ref("BatchCreate")}},
        },
        links=_BATCH_LINKS,
    ),
    ("get", "/batches"): _Operation(
        "listBatches",
        ok=_json_response("One page of the account's batches, newest first.", _ref("BatchList")),
        errors=(400, 401, 429),
        parameters=[
            _query("after", _STRING, "A batch id: the page holds older batches."),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "Page size.",
            ),
            _query(
                "status",
                {"type": "string", "pattern": _STATUSES_PATTERN},
                "Comma-separated statuses.",
            ),
            _query("ds_name", _STRING, "Case-insensitive part of `metadata.ds_name`."),
            _query(
                "input_file_ids",
                {"type": "string", "pattern": _FILE_IDS_PATTERN},
                "At most 20 comma-separated input file ids.",
            ),
            _query(
                "create_after",
                {"type": "string", "pattern": _TIME_PATTERN},
                "yyyyMMddHHmmss in the server's time zone, inclusive.",
            ),
            _query(
                "create_before",
                {"type": "string", "pattern": _TIME_PATTERN},
                "yyyyMMddHHmmss in the server's time zone, inclusive.",
            ),
        ],
    ),
    ("get", "/batches/{batch_id}"): _Operation(
        "retrieveBatch",
        ok=_json_response("The batch.", _ref("Batch")),
        errors=(400, 401, 404, 429),
        parameters=[_path_id("batch_id", "batch")],
    ),
    ("post", "/batches/{batch_id}/cancel"): _Operation(
        "cancelBatch",
        ok=_json_response("The batch, `cancelling` or `cancelled`.", _ref("Batch")),
        errors=(401, 404, 409, 413, 429),
        parameters=[_path_id("batch_id", "batch")],
    ),
}

_HEALTH = _json_response(
    "The process answers.",
    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
)
_READY_BODY = {
    "type": "object",
    "required": ["status", "database", "storage"],
    "properties": {
        "status": {"enum": ["ok", "unavailable"]},
        "database": _STRING,
        "storage": _STRING,
    },
}
# Unauthenticated operations: (responses, operation id).
PUBLIC: dict[tuple[str, str], tuple[Json, str]] = {
    ("get", "/health"): ({"200": _HEALTH}, "health"),
    ("get", "/ready"): (
        {
            "200": _json_response("The database and the storage answer.", _READY_BODY),
            "503": _json_response(_ERROR_DESCRIPTIONS[503], _READY_BODY),
        },
        "ready",
    ),
}


def install(app: FastAPI, prefixes: Sequence[str]) -> None:
    """Serve the completed description at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> Json:
        if app.openapi_schema is None:
            generated = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(generated, prefixes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: Json, prefixes: Sequence[str]) -> Json:
    """Add bodies, answers, links and the Bearer scheme to FastAPI's ``document``."""
    document = copy.deepcopy(document)
    document["info"]["description"] = _DESCRIPTION
    for path, item in document["paths"].items():
        prefix, below = _split(path, prefixes)
        suffix = _COMPAT_SUFFIX if prefix and prefix != prefixes[0] else ""
        for method, operation in item.items():
            if (method, below) in OPERATIONS:
                _describe(operation, OPERATIONS[method, below], suffix)
            elif (method, path) in PUBLIC:
                responses, operation_id = PUBLIC[method, path]
                operation.update(
                    operationId=operation_id, responses=copy.deepcopy(responses), security=[]
                )
    document["components"] = {
        "schemas": copy.deepcopy(SCHEMAS),
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: from the server's `[[api_keys]]` or made with "
                "`lowtide keys create`. With no key anywhere the server listens on loopback "
                "only and needs none.",
            }
        },
        # Answers of no operation in particular: a method or a path the server does not serve.
        "responses": {
            "MethodNotAllowed": _error_response(405),
            "NotFound": {
                "description": "No route has this path.",
                "content": {"application/json": {"schema": _ref("Error")}},
            },
        },
    }
    document["security"] = [{"bearer": []}]
    return document


def _split(path: str, prefixes: Sequence[str]) -> tuple[str, str]:
    for prefix in prefixes:
        if path.startswith(prefix + "/"):
            return prefix, path.removeprefix(prefix)
    return "", path


def _describe(operation: Json, spec: _Operation, suffix: str) -> None:
    operation["operationId"] = spec.operation_id + suffix
    operation["parameters"] = copy.deepcopy(spec.parameters)
    if spec.body is not None:
        operation["requestBody"] = copy.deepcopy(spec.body)
    responses: Json = {"200": copy.deepcopy(spec.ok)}
    if spec.links:
        responses["200"]["links"] = {
            name: _link(target + suffix, parameters, body)
            for name, (target, parameters, body) in spec.links.items()
        }
    for status in spec.errors:
        responses[str(status)] = _error_response(status)
    operation["responses"] = responses


def _link(operation_id: str, parameters: Json, body: Json | None) -> Json:
    link: Json = {"operationId": operation_id}
    if parameters:
        link["parameters"] = dict(parameters)
    if body is not None:
        link["requestBody"] = dict(body)
    return link


_DESCRIPTION = """A self-hosted Batch API for LLM requests, wire-compatible with the OpenAI and
Model Studio Files and Batches APIs.

Every operation is served under `/v1` and, for Model Studio clients, under
`/compatible-mode/v1` (operation ids ending in `CompatibleMode`). Authenticate with
`Authorization: Bearer <key>`. Every error answer is the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`; a method a path does not serve answers 405
with an `Allow` header, and an unknown path answers 404, both in that envelope."""
