"""The fake hosted Batch API's HTTP side (aiohttp), run inside the current event loop.

Routes, under ``/v1`` as OpenAI has them: ``POST /files`` (multipart), ``GET /files``,
``GET /files/{id}``, ``GET /files/{id}/content``, ``DELETE /files/{id}``, ``POST /batches``
(with ``Idempotency-Key``), ``GET /batches``, ``GET /batches/{id}``,
``POST /batches/{id}/cancel``. Lists are newest first, paged with ``after`` and ``limit``.

Control routes (never faulted, never counted): ``GET /_fake/stats[?per_key=1]``,
``POST /_fake/config`` (a JSON object of ``BatchApiConfig`` fields), ``GET /_fake/batches``
(every batch as the API shows it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
from aiohttp import web

from lowtide.testing.batch_api.state import BatchApiConfig, FakeBatch, Objects, StoredFile
from lowtide.testing.serving import DEFAULT_BACKLOG, Served, listen
from lowtide.testing.upstream.config import require_loopback

_MAX_BODY = 1024 * 1024 * 1024


class FakeBatchApi(Served):
    """``async with FakeBatchApi(BatchApiConfig()) as api: api.base_url``."""

    def __init__(
        self, config: BatchApiConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        require_loopback(host)
        self.host, self._requested_port, self.port = host, port, 0
        self.objects = Objects(config or BatchApiConfig())
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> BatchApiConfig:
        return self.objects.config

    def configure(self, **changes: Any) -> BatchApiConfig:
        self.objects.config = self.objects.config.updated(changes)
        return self.objects.config

    def stats(self, per_key: bool = False) -> dict[str, Any]:
        return self.objects.stats.to_api(per_key, len(self.objects.files))

    async def start(self) -> str:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.port = await listen(self._runner, self.host, self._requested_port, DEFAULT_BACKLOG)
        return self.url

    async def close(self) -> None:
        await self.objects.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- routing -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/"):
            return await self._control(request)
        key = self.config.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        parts = path.removeprefix("/v1").strip("/").split("/")
        method = request.method
        if parts[0] == "files":
            return await self._files(request, method, parts[1:])
        if parts[0] == "batches":
            return await self._batches(request, method, parts[1:])
        return _error(404, f"Unknown route {method} {path}.", "unknown_url")

    async def _files(
        self, request: web.Request, method: str, rest: list[str]
    ) -> web.StreamResponse:
        objects = self.objects
        if not rest and method == "POST":
            return await self._upload(request)
        if not rest and method == "GET":
            found = [
                f
                for f in objects.files.values()
                if f.purpose == request.query.get("purpose", f.purpose)
            ]
            return _page(request, [f.to_api() for f in reversed(found)])
        stored = objects.files.get(rest[0]) if rest else None
        if stored is None:
            return _error(404, f"No such File object: {rest[0] if rest else ''}", None)
        if len(rest) == 2 and rest[1] == "content" and method == "GET":
            return await self._content(stored)
        if len(rest) == 1 and method == "DELETE":
            objects.stats.deletes += 1
            del objects.files[stored.id]
            return _json({"id": stored.id, "object": "file", "deleted": True})
        if len(rest) == 1 and method == "GET":
            return _json(stored.to_api())
        return _error(404, "Unknown route.", None)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        objects = self.objects
        objects.stats.uploading += 1
        try:
            form = await request.post()
            upload = form.get("file")
            if not isinstance(upload, web.FileField):
                return _error(400, "Missing file.", "missing_required_parameter")
            data = upload.file.read()
            stored = objects.add_file(upload.filename, str(form.get("purpose", "batch")), data)
            objects.stats.uploads += 1
            objects.stats.uploads_by_name[upload.filename] += 1
            await asyncio.sleep(self.config.hold_uploads)
            if objects.take("lose_upload_answers"):
                objects.stats.lost_upload_answers += 1
                return _drop(request)
            return _json(stored.to_api())
        finally:
            objects.stats.uploading -= 1

    async def _content(self, stored: StoredFile) -> web.StreamResponse:
        objects = self.objects
        objects.stats.contents += 1
        objects.stats.downloading += 1
        try:
            await asyncio.sleep(self.config.hold_contents)
        finally:
            objects.stats.downloading -= 1
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _batches(
        self, request: web.Request, method: str, rest: list[str]
    ) -> web.StreamResponse:
        objects = self.objects
        if not rest and method == "POST":
            return await self._create(request)
        if not rest and method == "GET":
            objects.stats.lists += 1
            found = sorted(objects.batches.values(), key=lambda b: b.created_at)
            return _page(request, [b.to_api() for b in reversed(found)])
        batch = objects.batches.get(rest[0]) if rest else None
        if batch is None:
            return _error(404, f"No batch found with id '{rest[0] if rest else ''}'.", None)
        if len(rest) == 1 and method == "GET":
            objects.stats.retrieves += 1
            return _json(batch.to_api())
        if len(rest) == 2 and rest[1] == "cancel" and method == "POST":
            objects.stats.cancels += 1
            if batch.status in ("completed", "failed", "expired"):
                return _error(409, f"Cannot cancel a batch with status '{batch.status}'.", None)
            objects.cancel(batch)
            return _json(batch.to_api())
        return _error(404, "Unknown route.", None)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        objects = self.objects
        objects.stats.creates += 1
        if objects.take("rate_429_creates"):
            objects.stats.create_429 += 1
            wait = self.config.retry_after
            headers = {
                "Retry-After": str(max(1, round(wait))),
                "retry-after-ms": str(int(wait * 1000)),
            }
            return _error(
                429, "Rate limit reached for batch creation.", "rate_limit_exceeded", headers
            )
        try:
            params = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "The body is not JSON.", "invalid_json")
        key = request.headers.get("Idempotency-Key")
        batch: FakeBatch | None = None
        if key and self.config.honour_idempotency and key in objects.keys:
            batch = objects.batches[objects.keys[key]]
        if batch is None:
            if params.get("input_file_id") not in objects.files:
                return _error(400, "The input file does not exist.", "invalid_request")
            objects.stats.creating += 1
            try:
                batch = objects.create(
                    params["input_file_id"],
                    str(params.get("endpoint")),
                    str(params.get("completion_window")),
                    dict(params.get("metadata") or {}),
                )
                if key:
                    objects.keys[key] = batch.id
                await asyncio.sleep(self.config.hold_creates)
            finally:
                objects.stats.creating -= 1
        if objects.take("lose_create_answers"):
            objects.stats.lost_create_answers += 1
            return _drop(request)
        return _json(batch.to_api())

    async def _control(self, request: web.Request) -> web.Response:
        route = (request.method, request.path)
        if route == ("GET", "/_fake/stats"):
            return _json(self.stats(request.query.get("per_key") in ("1", "true")))
        if route == ("GET", "/_fake/batches"):
            found = [b.to_api() | {"fate": b.fate} for b in self.objects.batches.values()]
            return _json({"data": found})
        if route == ("POST", "/_fake/config"):
            try:
                changes = orjson.loads(await request.read())
                config = self.configure(**changes)
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return _json({"error": str(exc)}, 400)
            return _json({"config": dataclasses.asdict(config)})
        return _json({"error": f"no control route {request.method} {request.path}"}, 404)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error(
    status: int, message: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _drop(request: web.Request) -> web.Response:
    """The call took effect, but its client never hears of it (a reset)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


def _page(request: web.Request, items: list[dict[str, Any]]) -> web.Response:
    """Newest first (``items`` already are), after the id ``after``, ``limit`` of them."""
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = max(1, min(10_000, int(request.query.get("limit", "20"))))
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
