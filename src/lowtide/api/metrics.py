"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from lowtide import metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    # Gauges that are read rather than counted are refreshed just before each scrape.
    for refresh in request.app.state.metrics_refreshers:
        await refresh()
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
