"""JSON responses rendered with orjson (several times faster than the stdlib encoder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from lowtide.domain import wire


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def page(items: Sequence[wire.JsonDict], has_more: bool) -> JSON:
    """The list envelope of the Files and Batches APIs (``wire.FileList``, ``wire.BatchList``)."""
    return JSON(wire.page_json(items, has_more))
