"""Routes of the batch controls, lowtide's extensions (docs/extensions.md): an estimate before a
batch runs, its results so far, pause, resume, and the retry of its failed lines."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from lowtide.api.auth import Caller, limited
from lowtide.api.params import BatchId, read_json_body
from lowtide.api.responses import JSON
from lowtide.domain import wire
from lowtide.service.controls import ControlService
from lowtide.service.estimate import EstimateService

router = APIRouter(tags=["batch controls"])
Creator = Annotated[Caller, Depends(limited("create"))]
Reader = Annotated[Caller, Depends(limited("retrieve"))]
Canceller = Annotated[Caller, Depends(limited("cancel"))]

#: The headers of ``GET /batches/{id}/results`` (``lowtide.service.controls.Results``).
LAST_LINE = "Lowtide-Last-Line"
DONE_THROUGH = "Lowtide-Done-Through"
JSONL = "application/jsonl"


def _controls(request: Request) -> ControlService:
    service: ControlService = request.app.state.controls
    return service


@router.post(
    "/batches/estimate",
    summary="Estimate a batch of a file before it runs (a lowtide extension)",
    response_model=wire.BatchEstimate,
    response_description="Lines, tokens, cost range and expected duration; or the file's "
    "validation errors.",
)
async def estimate_batch(request: Request, caller: Creator) -> JSON:
    estimates: EstimateService = request.app.state.estimates
    return JSON(await estimates.estimate(caller.account, await read_json_body(request)))


@router.get(
    "/batches/{batch_id}/results",
    summary="Stream the result lines recorded so far (a lowtide extension)",
    response_class=StreamingResponse,
    response_description="Output and error lines in line order, as JSONL.",
    responses={
        200: {
            "content": {JSONL: {"schema": {"type": "string"}}},
            "headers": {
                LAST_LINE: {
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "required": True,
                    "description": "Every line of the kinds asked, from `after` + 1 to this one, "
                    "that had a result when the answer was read is in the answer.",
                },
                DONE_THROUGH: {
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                    "required": True,
                    "description": "Every line up to this one has its result, for good.",
                },
            },
        }
    },
)
async def batch_results(request: Request, batch_id: BatchId, caller: Reader) -> StreamingResponse:
    query = dict(request.query_params)
    found = await _controls(request).results(caller.read_scope(), batch_id, query)
    headers = {LAST_LINE: str(found.last_line), DONE_THROUGH: str(found.done_through)}
    return StreamingResponse(found.lines, media_type=JSONL, headers=headers)


@router.post(
    "/batches/{batch_id}/pause",
    summary="Pause a batch: nothing new is sent (a lowtide extension)",
    response_model=wire.Batch,
    response_description="The batch, in_progress with `paused_at` set.",
)
async def pause_batch(request: Request, batch_id: BatchId, caller: Canceller) -> JSON:
    return JSON((await _controls(request).pause(caller.account, batch_id)).to_api())


@router.post(
    "/batches/{batch_id}/resume",
    summary="Resume a paused batch (a lowtide extension)",
    response_model=wire.Batch,
    response_description="The batch, in_progress with `paused_at` null.",
)
async def resume_batch(request: Request, batch_id: BatchId, caller: Canceller) -> JSON:
    return JSON((await _controls(request).resume(caller.account, batch_id)).to_api())


@router.post(
    "/batches/{batch_id}/retry",
    summary="Retry a finished batch's failed lines as a new batch (optional Idempotency-Key "
    "header; a lowtide extension)",
    response_model=wire.Batch,
    response_description="The new batch, in `validating`, with `metadata.retry_of`.",
)
async def retry_batch(request: Request, batch_id: BatchId, caller: Creator) -> JSON:
    params = await read_json_body(request, required=False)
    key = request.headers.get("idempotency-key")
    return JSON(await _controls(request).retry_idempotent(caller.account, batch_id, params, key))
