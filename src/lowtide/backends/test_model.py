"""The built-in test model ``batch-test-model`` (docs/api-compatibility.md,
"Test model"): a fixed reply, no model."""

from __future__ import annotations

import secrets
import time

import orjson

from lowtide.backends.base import Reply

TEST_MODEL = "batch-test-model"


class TestModelBackend:
    name = "builtin-test-model"
    max_concurrency = 1_000

    def model_name(self, model: str) -> str:
        return model

    async def send(self, path: str, body: bytes) -> Reply:
        request_id = secrets.token_hex(16)
        reply = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": TEST_MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "This is a test result."},
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
        }
        return Reply(status=200, body=orjson.dumps(reply), request_id=request_id)

    async def probe(self) -> str | None:
        return None  # in this process: always there

    async def close(self) -> None:
        return None
