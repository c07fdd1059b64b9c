"""Routes of the Files API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from lowtide.api.auth import Caller, limited
from lowtide.api.responses import JSON, page
from lowtide.api.upload import parse_upload
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
)
async def upload_file(request: Request, caller: Uploader) -> JSON:
    service = _files(request)
    upload = parse_upload(request, service.settings.limits.max_file_bytes)
    key = request.headers.get("idempotency-key")
    return JSON(await service.upload_idempotent(caller.account, upload, key))


@router.get("/files", summary="List files")
async def list_files(
    request: Request,
    caller: Lister,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: str = "desc",
) -> JSON:
    records, has_more = await _files(request).list(
        caller.account, purpose=purpose, after=after, limit=limit, order=order
    )
    return page([r.to_api() for r in records], has_more=has_more)


@router.get("/files/{file_id}", summary="Retrieve a file")
async def retrieve_file(request: Request, file_id: str, caller: Reader) -> JSON:
    return JSON((await _files(request).get(caller.account, file_id)).to_api())


@router.get(
    "/files/{file_id}/content",
    summary="Download a file's content",
    response_class=StreamingResponse,
)
async def file_content(request: Request, file_id: str, caller: Reader) -> StreamingResponse:
    record, chunks = await _files(request).content(caller.account, file_id)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.id}.jsonl"',
        },
    )


@router.delete("/files/{file_id}", summary="Delete a file")
async def delete_file(request: Request, file_id: str, caller: Reader) -> JSON:
    record = await _files(request).delete(caller.account, file_id)
    return JSON({"id": record.id, "object": "file", "deleted": True})
