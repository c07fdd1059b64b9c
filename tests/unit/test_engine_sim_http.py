"""The simulated engine over HTTP, in-process: vLLM-shaped answers, /v1/models, /tokenize,
/metrics, errors in the OpenAI envelope, 429s from the budget, client tags and aborts.

Nothing here is timed: a request that must stay in flight is given a model that runs slower
than the test (``speed`` far below 1) and is let go by the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lowtide.testing.engine_sim import TAG_HEADER, EngineConfig, SimEngine

FAST = EngineConfig(speed=1000.0, max_seqs=8)
SYSTEM = "You answer questions about the quarterly report, briefly and exactly. " * 20


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data, headers=headers) as resp:
        return resp.status, resp.headers, orjson.loads(await resp.read())


def chat(question: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": "sim-model", "messages": messages, **extra}


async def wait_for(predicate: Any, what: str, deadline_s: float = 30.0) -> None:
    # The deadline only turns a hang into a failure.
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        await asyncio.sleep(0.01)


async def test_chat_answers_like_vllm_with_usage_and_cached_tokens() -> None:
    async with SimEngine(FAST) as eng:
        client = openai.AsyncOpenAI(base_url=eng.base_url, api_key="EMPTY", max_retries=0)
        first = await client.chat.completions.create(**chat("What was revenue?", max_tokens=7))
        second = await client.chat.completions.create(**chat("What were costs?", max_tokens=3))
        await client.close()
    assert first.object == "chat.completion" and first.model == "sim-model"
    assert first.choices[0].finish_reason == "length"
    assert first.choices[0].message.role == "assistant"
    assert len(first.choices[0].message.content.split()) == 7
    assert first.usage is not None and second.usage is not None
    assert first.usage.completion_tokens == 7 and second.usage.completion_tokens == 3
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # The system prompt's full blocks were cached by the first request.
    shared = second.usage.prompt_tokens_details.cached_tokens
    assert shared and shared % 16 == 0 and shared < second.usage.prompt_tokens


async def test_completions_models_and_tokenize(session: aiohttp.ClientSession) -> None:
    async with SimEngine(FAST) as eng:
        status, _, done = await post(
            session, eng.base_url + "/completions", {"prompt": "one two six", "max_tokens": 2}
        )
        assert status == 200 and done["object"] == "text_completion"
        assert done["usage"]["prompt_tokens"] == 4 and done["usage"]["completion_tokens"] == 2
        async with session.get(eng.base_url + "/models") as resp:
            models = orjson.loads(await resp.read())
        assert [m["id"] for m in models["data"]] == ["sim-model"]
        assert models["data"][0]["max_model_len"] == FAST.max_model_len
        status, _, counted = await post(session, eng.url + "/tokenize", chat("hi"))
        assert status == 200 and counted["max_model_len"] == FAST.max_model_len
        assert counted["count"] == len(counted["tokens"])
        # The same messages, sent for real, are charged the same prompt tokens.
        status, _, answered = await post(session, eng.base_url + "/chat/completions", chat("hi"))
        assert answered["usage"]["prompt_tokens"] == counted["count"]
        async with session.get(eng.url + "/health") as resp:
            assert resp.status == 200


async def test_metrics_are_prometheus_text_with_vllm_names(session: aiohttp.ClientSession) -> None:
    async with SimEngine(FAST) as eng:
        await post(session, eng.base_url + "/chat/completions", chat("a", max_tokens=2))
        await post(session, eng.base_url + "/chat/completions", chat("b", max_tokens=2))
        async with session.get(eng.url + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
    values = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert values[name].labels == {"model_name": "sim-model"}, name
    assert values["vllm:num_requests_running"].value == 0
    assert values["vllm:kv_cache_usage_perc"].value == 0  # nothing runs: no block is held
    assert values["vllm:prefix_cache_hits_total"].value > 0
    assert (
        values["vllm:prefix_cache_hits_total"].value
        < values["vllm:prefix_cache_queries_total"].value
    )


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (chat("x", model="another-model"), 404, "model"),
        ({"model": "sim-model", "messages": []}, 400, "messages"),
        (chat("x", max_tokens=0), 400, "max_tokens"),
        (chat("x", stream=True), 400, "stream"),
        (chat("x", max_tokens=9000), 400, None),
    ],
)
async def test_bad_requests_get_the_openai_error_envelope(
    session: aiohttp.ClientSession, body: object, status: int, param: str | None
) -> None:
    async with SimEngine(FAST) as eng:
        got, _, answer = await post(session, eng.base_url + "/chat/completions", body)
        stats = eng.stats()
    assert got == status
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["message"] and answer["error"]["param"] == param
    assert stats["by_tag"]["default"]["refused"] == {str(status): 1}


async def test_beyond_the_request_budget_comes_a_429_with_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    # At 2x, the budget's minute is 30 real seconds: the three requests fit in it however
    # slow the machine is (at 1000x it was 60 ms, and a loaded machine took longer).
    async with SimEngine(EngineConfig(speed=2.0, rpm=2)) as eng:
        url = eng.base_url + "/chat/completions"
        answers = [await post(session, url, chat(f"q{i}", max_tokens=1)) for i in range(3)]
        stats = eng.stats()
    assert [status for status, _, _ in answers] == [200, 200, 429]
    _, headers, body = answers[2]
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    # 60 model seconds at 2x is 30 real seconds, less what passed since the first request.
    assert 0 < int(headers["retry-after-ms"]) <= 30_000
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert answers[0][1]["x-ratelimit-remaining-requests"] == "1"
    assert stats["finished"] == 2 and stats["by_tag"]["default"]["refused"] == {"429": 1}


async def test_a_client_tag_keeps_its_own_latencies(session: aiohttp.ClientSession) -> None:
    async with SimEngine(FAST) as eng:
        url = eng.base_url + "/chat/completions"
        await post(session, url, chat("batch", max_tokens=4))
        await post(session, url, chat("me", max_tokens=2), headers={TAG_HEADER: "interactive"})
        stats = eng.stats(records=True)
    assert stats["by_tag"]["default"]["finished"] == 1
    assert stats["by_tag"]["interactive"]["finished"] == 1
    assert stats["by_tag"]["interactive"]["completion_tokens"] == 2
    assert sorted(r["tag"] for r in stats["records"]) == ["default", "interactive"]
    for record in stats["records"]:
        assert record["arrival"] <= record["admitted"] < record["first_token"] <= record["finish"]


async def test_a_request_whose_client_goes_away_is_aborted_and_a_busy_cache_is_kept(
    session: aiohttp.ClientSession,
) -> None:
    # At speed 0.001 a step of 6.5 model ms takes 6.5 real seconds: the request stays running.
    async with SimEngine(EngineConfig(speed=0.001)) as eng:
        task = asyncio.create_task(
            post(session, eng.base_url + "/chat/completions", chat("slow", max_tokens=5))
        )
        await wait_for(lambda: eng.stats()["running"] == 1, "the request to run")
        status, _, answer = await post(session, eng.url + "/_sim/reset", {"cache": True})
        assert status == 409 and "nothing runs" in answer["error"]["message"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: eng.stats()["aborted"] == 1, "the request to be aborted")
        stats = eng.stats()
        assert stats["running"] == 0 and stats["kv_cache_usage"] == 0
        status, _, _ = await post(session, eng.url + "/_sim/reset", {"cache": True})
        assert status == 200
