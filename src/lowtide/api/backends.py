"""``GET /v1/backends`` (a lowtide extension): each backend as the engines see it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from lowtide.api.auth import Caller, limited
from lowtide.api.responses import JSON
from lowtide.domain import wire
from lowtide.service.backends import BackendService

router = APIRouter(tags=["backends"])
Reader = Annotated[Caller, Depends(limited("retrieve"))]


@router.get(
    "/backends",
    summary="List the backends: up or down, since when, why, and their current limits",
    response_model=wire.BackendList,
)
async def list_backends(request: Request, caller: Reader) -> JSON:
    service: BackendService = request.app.state.backends
    return JSON(wire.backends_json(await service.views()))
