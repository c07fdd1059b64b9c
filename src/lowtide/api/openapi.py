"""The OpenAPI description served at ``/openapi.json``: FastAPI's document, and what it cannot see.

FastAPI generates the paths, the parameters the routes declare and every answer object, from
the models the routes name (``lowtide.domain.wire``). The routes read their bodies, some query
parameters and the ``Idempotency-Key`` header themselves (to stream uploads and to word every
refusal as the hosted APIs do), so this module adds those from ``lowtide.api.params``, and what
no route states: the error answers by status, the links schemathesis follows (``tests/schema``),
and the Bearer scheme.

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
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from lowtide.api import params
from lowtide.domain import wire
from lowtide.domain.validation import TEST_ENDPOINT
from lowtide.service.idempotency import HEADER as IDEMPOTENCY_HEADER
from lowtide.service.idempotency import MAX_KEY_LENGTH

Json = dict[str, Any]

_COMPAT_SUFFIX = "CompatibleMode"
_REF = "#/components/schemas/{model}"
# What each error status means; the wording of each error is the service's.
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
    507: "The storage is full; try again later.",
}
_ERROR_HEADERS: dict[int, Json] = {
    401: {"WWW-Authenticate": {"schema": {"const": "Bearer"}, "required": True}},
    405: {"Allow": {"schema": {"type": "string"}, "required": True}},
    429: {
        "Retry-After": {
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
            "required": True,
            "description": "Seconds to wait before trying again.",
        }
    },
}
# Hand-made: the routes read this header themselves. Printable ASCII, as the service checks;
# HTTP drops the blanks around a header value, so none may stand there.
_IDEMPOTENCY_KEY = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "The same key with the same parameters within 24 hours answers the first "
    "response again; with other parameters, 409.",
    "schema": {"type": "string", "pattern": f"^[!-~]([ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$"},
}
#: Link name to (target operation id, parameters, request body).
Links = dict[str, tuple[str, Json, Json | None]]


@dataclass(frozen=True, slots=True)
class _Operation:
    """What FastAPI cannot see of one operation, keyed by method and path below the prefix."""

    operation_id: str
    errors: tuple[int, ...]
    header: bool = False  #: reads the ``Idempotency-Key`` header
    query: type[BaseModel] | None = None  #: the query parameters it reads itself
    body: tuple[str, type[BaseModel]] | None = None  #: media type and model of its body
    links: Links = field(default_factory=dict)
    body_required: bool = True  #: the body may be left out


_FILE_LINKS: Links = {
    "RetrieveFile": ("retrieveFile", {"file_id": "$response.body#/id"}, None),
    "DownloadFile": ("downloadFile", {"file_id": "$response.body#/id"}, None),
    "DeleteFile": ("deleteFile", {"file_id": "$response.body#/id"}, None),
    "CreateBatch": (
        "createBatch",
        {},
        {
            "input_file_id": "$response.body#/id",
            "endpoint": TEST_ENDPOINT,  # the test model runs anywhere, free
            "completion_window": "24h",
        },
    ),
}
_BATCH_LINKS: Links = {
    "RetrieveBatch": ("retrieveBatch", {"batch_id": "$response.body#/id"}, None),
    "CancelBatch": ("cancelBatch", {"batch_id": "$response.body#/id"}, None),
    "BatchResults": ("batchResults", {"batch_id": "$response.body#/id"}, None),
    "PauseBatch": ("pauseBatch", {"batch_id": "$response.body#/id"}, None),
    "ResumeBatch": ("resumeBatch", {"batch_id": "$response.body#/id"}, None),
    "RetryBatch": ("retryBatch", {"batch_id": "$response.body#/id"}, None),
}
# Every authenticated operation may answer 400 (a body on a read, a malformed request),
# 401 and 429; the rest depends on what it does.
OPERATIONS: dict[tuple[str, str], _Operation] = {
    ("post", "/files"): _Operation(
        "createFile",
        errors=(400, 401, 403, 409, 413, 415, 429, 507),
        header=True,
        body=("multipart/form-data", params.FileUpload),
        links=_FILE_LINKS,
    ),
    ("get", "/files"): _Operation("listFiles", errors=(400, 401, 429)),
    ("get", "/files/{file_id}"): _Operation("retrieveFile", errors=(400, 401, 404, 429)),
    ("get", "/files/{file_id}/content"): _Operation("downloadFile", errors=(400, 401, 404, 429)),
    ("delete", "/files/{file_id}"): _Operation("deleteFile", errors=(400, 401, 404, 429)),
    ("post", "/batches"): _Operation(
        "createBatch",
        errors=(400, 401, 409, 413, 429, 507),
        header=True,
        body=("application/json", params.BatchCreate),
        links=_BATCH_LINKS,
    ),
    ("get", "/batches"): _Operation(
        "listBatches", errors=(400, 401, 429), query=params.BatchListQuery
    ),
    ("get", "/batches/{batch_id}"): _Operation("retrieveBatch", errors=(400, 401, 404, 429)),
    ("post", "/batches/{batch_id}/cancel"): _Operation(
        "cancelBatch", errors=(401, 404, 409, 413, 429)
    ),
    ("get", "/backends"): _Operation("listBackends", errors=(400, 401, 429)),
    # The batch controls (docs/extensions.md).
    ("post", "/batches/estimate"): _Operation(
        "estimateBatch",
        errors=(400, 401, 413, 429),
        body=("application/json", params.BatchEstimateRequest),
    ),
    ("get", "/batches/{batch_id}/results"): _Operation(
        "batchResults", errors=(400, 401, 404, 429), query=params.ResultsQuery
    ),
    ("post", "/batches/{batch_id}/pause"): _Operation(
        "pauseBatch", errors=(401, 404, 409, 413, 429)
    ),
    ("post", "/batches/{batch_id}/resume"): _Operation(
        "resumeBatch", errors=(401, 404, 409, 413, 429)
    ),
    ("post", "/batches/{batch_id}/retry"): _Operation(
        "retryBatch",
        errors=(400, 401, 403, 404, 409, 413, 429),
        header=True,
        body=("application/json", params.BatchRetry),
        links=_BATCH_LINKS,
        body_required=False,
    ),
}
#: Unauthenticated operations, to their operation ids.
PUBLIC = {("get", "/health"): "health", ("get", "/ready"): "ready"}
#: Models no route names as its answer, and how they are read.
_EXTRA_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (wire.Error, "serialization"),
    (params.BatchCreate, "validation"),
    (params.BatchEstimateRequest, "validation"),
    (params.BatchRetry, "validation"),
    (params.FileUpload, "validation"),
)


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
            # Every route reads its input itself and words its own refusals: never a 422.
            operation["responses"].pop("422", None)
            if (method, below) in OPERATIONS:
                _describe(operation, OPERATIONS[method, below], suffix)
            elif (method, path) in PUBLIC:
                operation.update(operationId=PUBLIC[method, path], security=[])
    document["components"] = {
        "schemas": _schemas(document["components"]["schemas"]),
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
                "content": {"application/json": {"schema": _ref(wire.Error)}},
            },
        },
    }
    document["security"] = [{"bearer": []}]
    return document


def _schemas(generated: Json) -> Json:
    """FastAPI's schemas of the answers, without its validation error (never sent), and the
    schemas of the models no route names as its answer."""
    never = ("HTTPValidationError", "ValidationError")
    schemas = {name: schema for name, schema in generated.items() if name not in never}
    _, extra = models_json_schema(_EXTRA_MODELS, ref_template=_REF)
    for name, schema in extra["$defs"].items():
        if schemas.setdefault(name, schema) != schema:
            raise RuntimeError(f"two models are named {name}")
    return schemas


def _split(path: str, prefixes: Sequence[str]) -> tuple[str, str]:
    for prefix in prefixes:
        if path.startswith(prefix + "/"):
            return prefix, path.removeprefix(prefix)
    return "", path


def _describe(operation: Json, spec: _Operation, suffix: str) -> None:
    operation["operationId"] = spec.operation_id + suffix
    parameters: list[Json] = operation.setdefault("parameters", [])
    if spec.header:
        parameters.append(copy.deepcopy(_IDEMPOTENCY_KEY))
    if spec.query is not None:
        parameters.extend(_query_parameters(spec.query))
    if spec.body is not None:
        media_type, model = spec.body
        operation["requestBody"] = {
            "required": spec.body_required,
            "content": {media_type: {"schema": _ref(model)}},
        }
    responses = operation["responses"]
    if spec.links:
        responses["200"]["links"] = {
            name: _link(target + suffix, link_parameters, link_body)
            for name, (target, link_parameters, link_body) in spec.links.items()
        }
    for status in spec.errors:
        responses[str(status)] = _error_response(status)


def _query_parameters(model: type[BaseModel]) -> list[Json]:
    """One optional query parameter per field of ``model``."""
    properties = model.model_json_schema(ref_template=_REF)["properties"]
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": schema.get("description", ""),
            "schema": schema,
        }
        for name, schema in properties.items()
    ]


def _ref(model: type[BaseModel]) -> Json:
    return {"$ref": _REF.format(model=model.__name__)}


def _error_response(status: int) -> Json:
    response: Json = {
        "description": _ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": _ref(wire.Error)}},
    }
    if status in _ERROR_HEADERS:
        response["headers"] = copy.deepcopy(_ERROR_HEADERS[status])
    return response


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
