"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lowtide.api.responses import JSON
from lowtide.domain import wire
from lowtide.service.backends import BackendService

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Liveness: the process answers",
    response_model=wire.Health,
    response_description="The process answers.",
)
async def health() -> JSON:
    return JSON(wire.health_json())


@router.get(
    "/ready",
    summary="Readiness: the database and the storage answer (backends are named, not required)",
    response_model=wire.Ready,
    response_description="The database and the storage answer.",
    responses={
        503: {"model": wire.Ready, "description": "The database or the storage does not answer."}
    },
)
async def ready(request: Request) -> JSON:
    checks: dict[str, str] = {}
    for name, component in (
        ("database", request.app.state.store),
        ("storage", request.app.state.blobs),
    ):
        try:
            await component.ping()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready", whatever its kind
            checks[name] = f"error: {type(exc).__name__}"
    views = []
    if checks["database"] == "ok":
        service: BackendService = request.app.state.backends
        views = await service.views()
    body = wire.ready_json(checks["database"], checks["storage"], views)
    return JSON(body, status_code=200 if body["status"] == "ok" else 503)
