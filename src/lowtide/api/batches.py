"""Routes of the Batches API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.convertors import StringConvertor, register_url_convertor

from lowtide.api.auth import Caller, limited
from lowtide.api.params import BatchId, read_json_body
from lowtide.api.responses import JSON, page
from lowtide.domain import wire
from lowtide.service.batches import BatchService

router = APIRouter(tags=["batches"])
Creator = Annotated[Caller, Depends(limited("create"))]
Reader = Annotated[Caller, Depends(limited("retrieve"))]
Lister = Annotated[Caller, Depends(limited("list"))]
Canceller = Annotated[Caller, Depends(limited("cancel"))]


def _batches(request: Request) -> BatchService:
    service: BatchService = request.app.state.batches
    return service


@router.post(
    "/batches",
    summary="Create a batch (optional Idempotency-Key header)",
    response_model=wire.Batch,
    response_description="The batch, in `validating`.",
)
async def create_batch(request: Request, caller: Creator) -> JSON:
    params = await read_json_body(request)
    key = request.headers.get("idempotency-key")
    return JSON(await _batches(request).create_idempotent(caller.account, params, key))


@router.get(
    "/batches",
    summary="List batches, newest first",
    response_model=wire.BatchList,
    response_description="One page of the account's batches, newest first.",
)
async def list_batches(request: Request, caller: Lister) -> JSON:
    query = dict(request.query_params)
    records, has_more = await _batches(request).list(caller.read_scope(), query)
    return page([b.to_api() for b in records], has_more=has_more)


class _BatchPath(StringConvertor):
    """A batch id in a path: any segment but ``estimate``, which names the route
    ``POST /batches/estimate`` (so that a GET of it answers 405 with ``Allow: POST``, rather
    than looking for a batch named so)."""

    regex = "(?!estimate$)[^/]+"


register_url_convertor("batch", _BatchPath())


@router.get(
    "/batches/{batch_id:batch}",
    summary="Retrieve a batch",
    response_model=wire.Batch,
    response_description="The batch.",
)
async def retrieve_batch(request: Request, batch_id: BatchId, caller: Reader) -> JSON:
    return JSON((await _batches(request).get(caller.read_scope(), batch_id)).to_api())


@router.post(
    "/batches/{batch_id}/cancel",
    summary="Cancel a batch",
    response_model=wire.Batch,
    response_description="The batch, `cancelling` or `cancelled`.",
)
async def cancel_batch(request: Request, batch_id: BatchId, caller: Canceller) -> JSON:
    return JSON((await _batches(request).cancel(caller.account, batch_id)).to_api())
