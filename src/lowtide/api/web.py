"""The web page: ``/ui`` serves a small single-page app that talks to the JSON API.

The page is plain HTML, CSS and JavaScript modules shipped as package data
(``lowtide/web/static``). The API key lives in the browser's session storage and goes out
only as the ``Authorization`` header of ``fetch`` calls, so these routes need no
authentication: they serve the same public files to everyone.

A request names an asset only by looking it up in the fixed set of files found in the package
at first use; no filesystem path is ever built from the request.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from lowtide.api.errors import envelope

router = APIRouter(include_in_schema=False)

INDEX = "index.html"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Scripts and styles come from this origin only: no inline script, no inline style, no
# other host, and the page may not be framed (clickjacking on the cancel button).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Asset names carry no content hash, so a long max-age would keep stale scripts after an
# upgrade; the browser revalidates instead, and an unchanged file costs a 304.
_CACHE_CONTROL = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """The files of ``lowtide/web/static`` by name, read once."""
    found: dict[str, Asset] = {}
    for entry in resources.files("lowtide.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _CONTENT_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            found[entry.name] = Asset(body, _CONTENT_TYPES[suffix], etag)
    return found


def _serve(request: Request, name: str) -> Response:
    asset = assets().get(name)
    if asset is None:
        return envelope(
            404, f"Unknown request URL: GET {request.url.path}.", headers=dict(SECURITY_HEADERS)
        )
    headers = {**SECURITY_HEADERS, "Cache-Control": _CACHE_CONTROL, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", headers=SECURITY_HEADERS)


@router.get("/ui")
@router.get("/ui/")
async def index(request: Request) -> Response:
    return _serve(request, INDEX)


@router.get("/ui/static/{name}")
async def static(request: Request, name: str) -> Response:
    return _serve(request, name)
