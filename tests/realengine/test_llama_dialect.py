"""The llamacpp dialect against llama.cpp's server (llama-cpp-python): lines written for other
backends are sent the way this server reads them, and the body sent is in the result line."""

from __future__ import annotations

from typing import Any

from tests.realengine.batches import client, read_results, submit, wait_for
from tests.realengine.conftest import ALIAS, MODEL, LowtideFactory
from tests.realengine.llama_server import LlamaServer
from tests.support.batches import assert_each_once


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"hello {custom_id}"}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": messages, **body},
    }


def test_lines_written_for_other_backends(make_lowtide: LowtideFactory, llama: LlamaServer) -> None:
    lines = [
        # OpenAI's spelling of the limit, which this server does not read.
        line("openai", max_completion_tokens=3, reasoning_effort="low"),
        # Model Studio's thinking switch and budget.
        line("dashscope", enable_thinking=False, thinking_budget=10, max_tokens=2),
        # Ollama's native switch.
        line("ollama", think=False, max_tokens=1),
    ]
    # Sent as it is, the first line's limit is ignored: the answer runs on to the end of the
    # context (the reason the dialect renames it).
    status, direct = llama.chat({**lines[0]["body"], "model": ALIAS})
    assert status == 200 and direct["usage"]["completion_tokens"] > 3

    server = make_lowtide(record_sent_body=True)
    c = client(server)
    batch = wait_for(c, submit(c, lines).id)
    assert batch.status == "completed", batch
    outputs, errors = read_results(c, batch)
    assert errors == []
    assert_each_once(lines, outputs, errors)
    got = {o["custom_id"]: o for o in outputs}

    off = {"chat_template_kwargs": {"enable_thinking": False}}
    sent = {
        "openai": {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": 3},
        "dashscope": {**off, "max_tokens": 2},
        "ollama": {**off, "max_tokens": 1},
    }
    for custom_id, fields in sent.items():
        result = got[custom_id]
        messages = [{"role": "user", "content": f"hello {custom_id}"}]
        assert result["sent_body"] == {"model": ALIAS, "messages": messages, **fields}
        usage = result["response"]["body"]["usage"]
        assert usage["completion_tokens"] == fields["max_tokens"], custom_id
        # The same body sent directly gets the same answer's usage: the server read it as
        # lowtide recorded it.
        status, direct = llama.chat(result["sent_body"])
        assert (status, direct["usage"]) == (200, usage)
