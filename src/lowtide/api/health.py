"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request

from lowtide.api.responses import JSON

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> JSON:
    return JSON({"status": "ok"})


@router.get("/ready", summary="Readiness: the database and the storage answer")
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
    ok = all(v == "ok" for v in checks.values())
    return JSON({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)
