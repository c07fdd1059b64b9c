"""The fake OpenAI-compatible upstream: answers, every fault mode, stats and control routes.

Time is judged by causality where it can be (nothing answers before its latency, a pause that
was announced before the client got its 429 is over once its length has passed since), and a
duration's upper bound only against a baseline measured in the same test. Requests that must
be in flight at once are held there (a long latency, a hang) until the test lets them go.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from lowtide.testing.upstream import FakeUpstream, UpstreamConfig, UpstreamProcess

CHAT = "/v1/chat/completions"


def chat(content: str, model: str = "m-1", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content},
        ],
        **extra,
    }


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    *,
    headers: Mapping[str, str] | None = None,
    give_up_after: float | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    client_timeout = aiohttp.ClientTimeout(total=give_up_after) if give_up_after else None
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url, data=data, headers=all_headers, timeout=client_timeout) as r:
        return r.status, r.headers, await r.read()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        assert r.status == 200
        return orjson.loads(await r.read())


def error_of(raw: bytes) -> dict[str, Any]:
    body = orjson.loads(raw)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def wait_for(predicate: Any, within: float = 30.0) -> None:
    """Poll until ``predicate()``; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def sleep_past(deadline: float, clock: Any = time.monotonic) -> None:
    """Sleep until ``clock()`` is past ``deadline``: for a test about a duration running out."""
    await asyncio.sleep(max(0.0, deadline - clock()) + 0.01)
    assert clock() > deadline  # the loop's timers never fire more than a millisecond early


async def give_up(session: aiohttp.ClientSession, up: FakeUpstream, content: str) -> dict[str, Any]:
    """Send a request the fake holds forever, wait until it holds it, then give up on it (as
    a client that times out does); the fake's stats once it has let the request go."""
    task = asyncio.create_task(post(session, up.url + CHAT, chat(content)))
    hung = up.stats()["hung"]
    await wait_for(lambda: up.stats()["hung"] > hung)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: up.stats()["in_flight"] == 0)
    return up.stats()


# ---------------------------------------------------------------- answers


async def test_chat_completion_is_realistic_and_deterministic() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        content = "x" * 50 + " tail"
        status, headers, raw = await post(s, up.url + CHAT, chat(content))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["x-request-id"]
    body = orjson.loads(raw)
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "m-1" and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "echo: " + content[:40]
    usage = body["usage"]
    assert usage["prompt_tokens"] == (len("be brief") + len(content)) // 4
    assert usage["completion_tokens"] == 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + 16
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


async def test_max_tokens_caps_completion_and_reasoning_tokens_are_reported() -> None:
    async with (
        FakeUpstream(UpstreamConfig(completion_tokens=20, reasoning_tokens=8)) as up,
        aiohttp.ClientSession() as s,
    ):
        _, _, raw = await post(s, up.url + CHAT, chat("hi", max_completion_tokens=5))
        _, _, raw2 = await post(s, up.url + CHAT, chat("hi"))
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 5
    assert orjson.loads(raw)["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5
    usage = orjson.loads(raw2)["usage"]
    assert usage["completion_tokens"] == 20
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 8


async def test_completions_responses_embeddings_and_models() -> None:
    async with FakeUpstream(UpstreamConfig(models=("a", "b"))) as up, aiohttp.ClientSession() as s:
        _, _, comp = await post(s, up.url + "/v1/completions", {"model": "a", "prompt": "p1"})
        _, _, resp = await post(s, up.url + "/v1/responses", {"model": "a", "input": "r1"})
        _, _, emb = await post(s, up.url + "/v1/embeddings", {"model": "e", "input": ["x", "y"]})
        models = await get_json(s, up.url + "/v1/models")
    completion = orjson.loads(comp)
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == "echo: p1"
    response = orjson.loads(resp)
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "echo: r1"
    assert response["usage"]["output_tokens"] == 16
    embeddings = orjson.loads(emb)
    assert embeddings["object"] == "list" and embeddings["model"] == "e"
    assert [d["index"] for d in embeddings["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 8 for d in embeddings["data"])
    assert embeddings["data"][0]["embedding"] != embeddings["data"][1]["embedding"]
    assert embeddings["usage"] == {"prompt_tokens": 1, "total_tokens": 1}  # never 0
    assert [m["id"] for m in models["data"]] == ["a", "b"]


async def test_the_openai_sdk_parses_every_answer() -> None:
    async with FakeUpstream() as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0)
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello"}]
        )
        # The SDK asks for base64 embeddings unless told otherwise, and decodes them itself.
        emb = await client.embeddings.create(model="e", input="hello")
        resp = await client.responses.create(model="m", input="hello")
        await client.close()
    assert reply.choices[0].message.content == "echo: hello"
    assert len(emb.data[0].embedding) == 8
    assert resp.output_text == "echo: hello"


# ---------------------------------------------------------------- faults


async def test_error_rate_answers_the_configured_statuses_with_an_error_envelope() -> None:
    cfg = UpstreamConfig(error_rate=1.0, error_statuses=(502, 503), seed=3)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        statuses = set()
        for i in range(20):
            status, _, raw = await post(s, up.url + CHAT, chat(f"line {i}"))
            statuses.add(status)
            assert error_of(raw)["type"] == "server_error"
        stats = up.stats()
    assert statuses == {502, 503}
    assert stats["errors_injected"] == 20 and stats["ok"] == 0
    assert stats["by_status"]["502"] + stats["by_status"]["503"] == 20


async def test_rate_limit_carries_retry_after_and_counts_early_requests() -> None:
    # A pause far longer than the test: whatever the machine's speed, the requests after the
    # 429 arrive inside it.
    cfg = UpstreamConfig(rate_429=1.0, retry_after=59.5, early_grace_ms=0)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, up.url + CHAT, chat("A"))
        assert status == 429
        assert headers["Retry-After"] == "60"  # whole seconds, rounded up
        assert headers["retry-after-ms"] == "59500"
        assert error_of(raw)["code"] == "rate_limit_exceeded"
        await post(s, up.url + CHAT, chat("A"))  # the same line, inside its pause
        await post(s, up.url + CHAT, chat("B"))  # another line, inside the global pause
        stats = up.stats()
    assert stats["early_requests"] == 2
    assert stats["early_same_key"] == 1
    assert 0 < stats["early_max_ms"] <= 59_500
    assert stats["pause_remaining_s"] > 0
    assert stats["rate_limited"] == 3


async def test_requests_after_the_pause_are_not_early() -> None:
    retry_after = 0.2
    cfg = UpstreamConfig(rate_429=1.0, retry_after=retry_after, early_grace_ms=0)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        status, _, _ = await post(s, up.url + CHAT, chat("A"))
        # The pause started when the fake answered, before this client had the answer: so it
        # is over once retry_after has passed from now.
        pause_over = time.monotonic() + retry_after
        assert status == 429
        up.configure(rate_429=0.0)
        await sleep_past(pause_over)
        status, _, _ = await post(s, up.url + CHAT, chat("A"))
        stats = up.stats()
    assert status == 200
    assert stats["early_requests"] == 0 and stats["early_same_key"] == 0
    assert stats["pause_remaining_s"] == 0 and stats["rate_limited"] == 1


async def test_storm_rejects_everything_then_stops_after_its_duration() -> None:
    async with (
        FakeUpstream(UpstreamConfig(storm_seconds=60, retry_after=0.05)) as up,
        aiohttp.ClientSession() as s,
    ):
        statuses = [(await post(s, up.url + CHAT, chat(f"l{i}")))[0] for i in range(5)]
        during = up.stats()
        # A new duration starts now; the storm must end by itself once it has run out.
        storm_until = up.configure(storm_seconds=0.2).storm_until
        await sleep_past(storm_until, time.time)
        after, _, _ = await post(s, up.url + CHAT, chat("later"))
        stats = up.stats()
    assert statuses == [429] * 5
    assert during["storm_active"] is True and during["storm_rejected"] == 5
    assert after == 200
    assert stats["storm_rejected"] == 5 and stats["storm_active"] is False


async def test_storm_started_and_ended_at_run_time_through_the_control_route() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        status, _, raw = await post(s, up.url + "/_fake/config", {"storm_seconds": 60})
        storm_until = orjson.loads(raw)["config"]["storm_until"]
        assert status == 200 and storm_until > time.time()
        during, headers, _ = await post(s, up.url + CHAT, chat("x"))
        status, _, raw = await post(s, up.url + "/_fake/config", {"storm_seconds": 0})
        assert status == 200 and orjson.loads(raw)["config"]["storm_until"] == 0
        after, _, _ = await post(s, up.url + CHAT, chat("x"))
    assert during == 429 and "Retry-After" in headers
    assert after == 200


async def test_drop_rate_closes_the_connection_without_an_answer() -> None:
    async with FakeUpstream(UpstreamConfig(drop_rate=1.0)) as up, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await post(s, up.url + CHAT, chat("x"))
        stats = up.stats()
    assert stats["dropped"] == 1 and stats["by_status"] == {}


async def test_hang_rate_never_answers_and_a_giving_up_client_frees_the_slot() -> None:
    async with FakeUpstream(UpstreamConfig(hang_rate=1.0)) as up, aiohttp.ClientSession() as s:
        stats = await give_up(s, up, "x")
    assert stats["hung"] == 1 and stats["client_disconnects"] == 1
    assert stats["by_status"] == {}


async def test_garbage_rate_answers_200_with_bodies_that_are_not_json() -> None:
    cfg = UpstreamConfig(garbage_rate=1.0, seed=11)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        kinds = set()
        for i in range(12):
            status, headers, raw = await post(s, up.url + CHAT, chat(f"g{i}"))
            assert status == 200
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(raw)
            kinds.add(headers["Content-Type"].split(";")[0])
        stats = up.stats()
    assert kinds == {"application/json", "text/html"}  # truncated JSON and an HTML page
    assert stats["garbage"] == 12


async def test_down_closes_connections_until_it_comes_back() -> None:
    async with FakeUpstream(UpstreamConfig(down_seconds=60)) as up, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            await post(s, up.url + CHAT, chat("x"))
        during = up.stats()
        # A new duration starts now; the outage must end by itself once it has run out.
        down_until = up.configure(down_seconds=0.2).down_until
        await sleep_past(down_until, time.time)
        status, _, _ = await post(s, up.url + CHAT, chat("x"))
        stats = up.stats()
    assert during["down_active"] is True
    assert status == 200
    assert stats["down_rejected"] == 1 and stats["down_active"] is False


async def test_down_in_503_mode_answers_503() -> None:
    cfg = UpstreamConfig(down_seconds=30, down_mode="503")
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        status, _, raw = await post(s, up.url + CHAT, chat("x"))
        up.configure(down_seconds=0)  # 0 ends the outage at once
        after, _, _ = await post(s, up.url + CHAT, chat("x"))
    assert status == 503 and error_of(raw)["type"] == "server_error"
    assert after == 200


async def test_latency_and_jitter_delay_the_answer() -> None:
    cfg = UpstreamConfig(latency=0.1, jitter=0.02)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        started = time.monotonic()
        await post(s, up.url + CHAT, chat("x"))
    assert time.monotonic() - started >= 0.08


async def answer_seconds(up: FakeUpstream, n: int) -> list[float]:
    """Seconds each of ``n`` concurrent chat requests took, as the client saw them."""
    async with aiohttp.ClientSession() as s:

        async def timed(i: int) -> float:
            started = time.monotonic()
            status, _, _ = await post(s, up.url + CHAT, chat(f"t{i}"))
            assert status == 200
            return time.monotonic() - started

        return list(await asyncio.gather(*(timed(i) for i in range(n))))


class LoopStalls:
    """The longest time this event loop was kept from running while the block ran: by its own
    work, or by the machine not giving the process a core (the tests run beside others)."""

    TICK = 0.01

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.TICK)
            self.worst = max(self.worst, time.monotonic() - before - self.TICK)

    async def __aenter__(self) -> LoopStalls:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_latency_is_honoured_for_concurrent_requests() -> None:
    # The client and the fake share this test's event loop: beyond the latency, 50 concurrent
    # requests cost connecting, sending, parsing, answering and reading, all on one thread. On
    # a loaded machine that was seen to take 0.29 s (mostly before the requests even reached
    # the fake), so a fixed bound is a guess about the machine. The same 50 requests without
    # latency, measured here and now, say what they cost on this machine at this moment.
    async with FakeUpstream() as up:
        overhead = max(0.01, max(await answer_seconds(up, 50)))
    # A latency of 10 overheads: a fake that ignored it answers long before it (the first
    # assertion, exact), one that counted it twice answers 10 overheads late, twice the slack
    # the second assertion gives (a generous 5 overheads, for the load changing meanwhile).
    # A stall of the loop while they run (a loaded machine kept the process off both cores
    # for 1.4 s once, in a run of the suite) delays every answer by as much, and is measured
    # and allowed for too: a double-counted latency still shows unless the loop stalled for as
    # long as the latency itself.
    latency = max(0.2, 10 * overhead)
    async with FakeUpstream(UpstreamConfig(latency=latency)) as up, LoopStalls() as stalls:
        seconds = await answer_seconds(up, 50)
        stats = up.stats()
    # Causal: the clock started before the request left; the loop's timers may fire up to a
    # millisecond early.
    assert min(seconds) >= latency - 0.001, seconds
    slack = 5 * overhead + stalls.worst
    assert max(seconds) < latency + slack, (latency, overhead, stalls.worst, seconds)
    assert stats["delayed"] == 50 and stats["late_max_ms"] < slack * 1000


class _StallingUpstream(FakeUpstream):
    """Its event loop stalls for a while right after each request has arrived."""

    def __init__(self, config: UpstreamConfig, stall: float) -> None:
        super().__init__(config)
        self.stall = stall

    def _make_request(self, *args: Any) -> web.BaseRequest:
        request = super()._make_request(*args)
        time.sleep(self.stall)  # blocking on purpose: a busy loop, not a slow answer
        return request


async def test_latency_counts_from_arrival_not_from_when_the_handler_runs() -> None:
    # What one request costs on this machine now, the most of three, without latency or stall.
    async with FakeUpstream() as up:
        overhead = max(0.01, *[max(await answer_seconds(up, 1)) for _ in range(3)])
    # A stall of 10 overheads, inside a latency twice as long: counted from arrival, the stall
    # is absorbed and the answer comes about one overhead after the latency; counted from when
    # the handler ran, the stall adds to the latency. The bound lies halfway between.
    stall = max(0.3, 10 * overhead)
    latency = 2 * stall
    async with _StallingUpstream(UpstreamConfig(latency=latency), stall) as up:
        (seconds,) = await answer_seconds(up, 1)
    assert latency - 0.001 <= seconds < latency + stall / 2, (latency, stall, seconds)


# ---------------------------------------------------------------- markers aimed at lines


async def test_fail400_marker_answers_context_length_exceeded() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        status, _, raw = await post(s, up.url + CHAT, chat("please FAIL400 me"))
        ok, _, _ = await post(s, up.url + CHAT, chat("fine"))
    assert status == 400 and ok == 200
    assert error_of(raw) | {"message": ""} == {
        "message": "",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }


async def test_fail500once_marker_fails_only_the_first_attempt_of_that_content() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        first = [(await post(s, up.url + CHAT, chat(f"FAIL500ONCE {i}")))[0] for i in range(2)]
        again = [(await post(s, up.url + CHAT, chat(f"FAIL500ONCE {i}")))[0] for i in range(2)]
        stats = up.stats()
    assert first == [500, 500] and again == [200, 200]
    assert stats["fail_once"] == 2


async def test_slow_hang_and_drop_markers() -> None:
    cfg = UpstreamConfig(slow_seconds=0.15)
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        started = time.monotonic()
        status, _, _ = await post(s, up.url + CHAT, chat("a SLOW one"))
        assert status == 200 and time.monotonic() - started >= 0.15  # never early: causal
        with pytest.raises(aiohttp.ClientError):
            await post(s, up.url + CHAT, chat("DROPCONN"))
        stats = await give_up(s, up, "HANGFOREVER")
    assert stats["dropped"] == 1 and stats["hung"] == 1 and stats["client_disconnects"] == 1


# ---------------------------------------------------------------- stats and control


async def test_peak_concurrency_is_tracked() -> None:
    # A latency longer than the test holds every request in flight until the test lets it go.
    async with FakeUpstream(UpstreamConfig(latency=3600)) as up, aiohttp.ClientSession() as s:
        held = [asyncio.create_task(post(s, up.url + CHAT, chat(f"c{i}"))) for i in range(10)]
        await wait_for(lambda: up.stats()["in_flight"] == 10)
        for task in held[3:]:
            task.cancel()
        await wait_for(lambda: up.stats()["in_flight"] == 3)
        peak = up.stats()["max_concurrency_seen"]
        up.reset()
        after_reset = up.stats()
        for task in held[:3]:
            task.cancel()
        await wait_for(lambda: up.stats()["in_flight"] == 0)
        stats = up.stats()
        await asyncio.gather(*held, return_exceptions=True)
    assert peak == 10  # the most at once, not how many are in flight now
    # A reset starts from what is still in flight.
    assert after_reset["max_concurrency_seen"] == 3 and after_reset["requests"] == 0
    assert stats["max_concurrency_seen"] == 3 and stats["in_flight"] == 0
    assert stats["client_disconnects"] == 3


async def test_per_key_counts_over_http_and_reset() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        for content in ("a", "a", "b"):
            await post(s, up.url + CHAT, chat(content))
        await post(s, up.url + "/v1/embeddings", {"model": "e", "input": "emb-in"})
        plain = await get_json(s, up.url + "/_fake/stats")
        with_keys = await get_json(s, up.url + "/_fake/stats?per_key=1")
        status, _, _ = await post(s, up.url + "/_fake/reset", {})
        after = await get_json(s, up.url + "/_fake/stats?per_key=1")
    assert "per_key" not in plain and plain["distinct_keys"] == 3
    assert with_keys["per_key"] == {"a": 2, "b": 1, "emb-in": 1}
    assert with_keys["requests"] == 4
    assert with_keys["by_route"] == {CHAT: 3, "/v1/embeddings": 1}
    assert with_keys["by_status"] == {"200": 4}
    assert status == 200
    assert after["requests"] == 0 and after["per_key"] == {} and after["by_status"] == {}


async def test_config_route_validates_and_applies() -> None:
    async with FakeUpstream() as up, aiohttp.ClientSession() as s:
        bad_field, _, _ = await post(s, up.url + "/_fake/config", {"nope": 1})
        bad_rate, _, _ = await post(s, up.url + "/_fake/config", {"error_rate": 2})
        bad_sum, _, _ = await post(s, up.url + "/_fake/config", {"drop_rate": 0.6, "rate_429": 0.6})
        bad_type, _, _ = await post(s, up.url + "/_fake/config", {"latency": "fast"})
        good, _, raw = await post(
            s, up.url + "/_fake/config", {"error_rate": 1, "error_statuses": [503]}
        )
        shown = await get_json(s, up.url + "/_fake/config")
        status, _, _ = await post(s, up.url + CHAT, chat("x"))
    assert (bad_field, bad_rate, bad_sum, bad_type) == (400, 400, 400, 400)
    assert good == 200 and orjson.loads(raw)["config"]["error_statuses"] == [503]
    assert shown["config"]["error_rate"] == 1.0
    assert status == 503


async def test_api_key_is_required_when_set() -> None:
    async with FakeUpstream(UpstreamConfig(api_key="sekret")) as up, aiohttp.ClientSession() as s:
        without, _, raw = await post(s, up.url + CHAT, chat("x"))
        wrong, _, _ = await post(
            s, up.url + CHAT, chat("x"), headers={"Authorization": "Bearer no"}
        )
        right, _, _ = await post(
            s, up.url + CHAT, chat("x"), headers={"Authorization": "Bearer sekret"}
        )
        stats = up.stats()
    assert (without, wrong, right) == (401, 401, 200)
    assert error_of(raw)["code"] == "invalid_api_key"
    assert stats["unauthorized"] == 2


async def test_malformed_requests_get_openai_style_errors() -> None:
    cfg = UpstreamConfig(reject_unknown_models=True, models=("known",))
    async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
        not_json, _, _ = await post(s, up.url + CHAT, b"{nope")
        no_model, _, raw_model = await post(s, up.url + CHAT, {"messages": []})
        no_messages, _, raw_messages = await post(s, up.url + CHAT, {"model": "known"})
        unknown, _, raw_unknown = await post(s, up.url + CHAT, chat("x", model="other"))
        no_route, _, _ = await post(s, up.url + "/v1/nothing", {})
        async with s.get(up.url + CHAT) as r:
            wrong_method = r.status
    assert (not_json, no_model, no_messages, unknown) == (400, 400, 400, 404)
    assert error_of(raw_model)["param"] == "model"
    assert error_of(raw_messages)["code"] == "missing_required_parameter"
    assert error_of(raw_unknown)["code"] == "model_not_found"
    assert (no_route, wrong_method) == (404, 405)


async def test_a_seed_makes_the_faults_reproducible() -> None:
    async def statuses() -> list[int]:
        cfg = UpstreamConfig(error_rate=0.3, rate_429=0.2, seed=42)
        async with FakeUpstream(cfg) as up, aiohttp.ClientSession() as s:
            return [(await post(s, up.url + CHAT, chat(f"s{i}")))[0] for i in range(30)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert 200 in first and 429 in first and any(status >= 500 for status in first)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="down_mode"):
        UpstreamConfig().updated({"down_mode": "explode"})
    with pytest.raises(ValueError, match="loopback"):
        FakeUpstream(host="0.0.0.0")  # refused: not loopback


# ---------------------------------------------------------------- as a process


@pytest.mark.measure_children
async def test_subprocess_prints_its_port_and_takes_flags() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lowtide.testing.upstream",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--rate-429",
        "1",
        "--retry-after",
        "2.5",
        "--error-statuses",
        "500,504",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("LISTENING http://127.0.0.1:")
        url = line.split()[1]
        async with aiohttp.ClientSession() as s:
            status, headers, _ = await post(s, url + CHAT, chat("x"))
            stats = await get_json(s, url + "/_fake/stats")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert status == 429
    assert (headers["Retry-After"], headers["retry-after-ms"]) == ("3", "2500")
    assert stats["rate_limited"] == 1
    assert stats["config"]["rate_429"] == 1.0
    assert stats["config"]["error_statuses"] == [500, 504]


@pytest.mark.measure_children
def test_upstream_process_helper_and_cli_refusals() -> None:
    with UpstreamProcess(UpstreamConfig(models=("p",))) as upstream:
        with urllib.request.urlopen(upstream.url + "/v1/models", timeout=30) as r:
            assert orjson.loads(r.read())["data"][0]["id"] == "p"
        pid = upstream.pid
    assert pid > 0
    for bad in (["--host", "10.1.2.3"], ["--rate-429", "2"], ["--bogus", "1"]):
        done = subprocess.run(
            [sys.executable, "-m", "lowtide.testing.upstream", *bad],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 2, bad
