"""Routes of the Files API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic.json_schema import SkipJsonSchema

from lowtide.api.auth import Caller, limited
from lowtide.api.params import FileId
from lowtide.api.responses import JSON, page
from lowtide.api.upload import parse_upload
from lowtide.domain import wire
from lowtide.service.files import FileService

router = APIRouter(tags=["files"])
Uploader = Annotated[Caller, Depends(limited("upload"))]
Reader = Annotated[Caller, Depends(limited("retrieve"))]
Lister = Annotated[Caller, Depends(limited("list"))]


def _files(request: Request) -> FileService:
    service: FileService = request.app.state.files
    return service


@router.post(
    "/files",
    summary="Upload a file (multipart: file, purpose; optional Idempotency-Key header)",
    response_model=wire.File,
    response_description="The stored file.",
)
async def upload_file(request: Request, caller: Uploader) -> JSON:
    service = _files(request)
    upload = parse_upload(request, service.settings.limits.max_file_bytes)
    key = request.headers.get("idempotency-key")
    return JSON(await service.upload_idempotent(caller.account, upload, key))


@router.get(
    "/files",
    summary="List files",
    response_model=wire.FileList,
    response_description="One page of the account's files.",
)
async def list_files(
    request: Request,
    caller: Lister,
    purpose: Annotated[
        str | SkipJsonSchema[None], Query(description="Only files of this purpose.")
    ] = None,
    after: Annotated[
        str | SkipJsonSchema[None], Query(description="A file id: the page starts after it.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Page size.")] = 10_000,
    # Documented, not checked here: the service words the refusal of another order.
    order: Annotated[
        str, Query(description="By creation time.", json_schema_extra={"enum": ["asc", "desc"]})
    ] = "desc",
) -> JSON:
    records, has_more = await _files(request).list(
        caller.account, purpose=purpose, after=after, limit=limit, order=order
    )
    return page([r.to_api() for r in records], has_more=has_more)


@router.get(
    "/files/{file_id}",
    summary="Retrieve a file",
    response_model=wire.File,
    response_description="The file.",
)
async def retrieve_file(request: Request, file_id: FileId, caller: Reader) -> JSON:
    return JSON((await _files(request).get(caller.account, file_id)).to_api())


@router.get(
    "/files/{file_id}/content",
    summary="Download a file's content",
    response_class=StreamingResponse,
    response_description="The file's bytes.",
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "headers": {"Content-Disposition": {"schema": {"type": "string"}, "required": True}},
        }
    },
)
async def file_content(request: Request, file_id: FileId, caller: Reader) -> StreamingResponse:
    record, chunks = await _files(request).content(caller.account, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.id}.jsonl"',
        },
    )


@router.delete(
    "/files/{file_id}",
    summary="Delete a file",
    response_model=wire.FileDeleted,
    response_description="The file is deleted.",
)
async def delete_file(request: Request, file_id: FileId, caller: Reader) -> JSON:
    record = await _files(request).delete(caller.account, file_id)
    return JSON(wire.file_deleted_json(record))
