"""The engine-metrics scraper (``lowtide.engine.engine_metrics``): the parser on vLLM's and
SGLang's pages, and one scrape of the simulated engine's ``/metrics`` in this process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from lowtide.engine.engine_metrics import Scraper, metrics_url, parse
from lowtide.engine.limits import AdaptiveLimit, EngineLoad, EngineLoadLimit
from lowtide.testing.engine_sim import EngineConfig, EngineCore, Seq, SimEngine
from lowtide.testing.engine_sim import metrics as sim_metrics

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="qwen",engine_type="unified",tp_rank="0"} 12.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="qwen",engine_type="unified",tp_rank="0"} 3.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="qwen"} 0.28
"""


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_default_metrics_url_sits_beside_v1() -> None:
    assert metrics_url("http://127.0.0.1:8001/v1", None) == "http://127.0.0.1:8001/metrics"
    assert metrics_url("http://127.0.0.1:8001/v1/", None) == "http://127.0.0.1:8001/metrics"
    assert metrics_url("http://gpu:9/v1", "http://gpu:9/other") == "http://gpu:9/other"
    assert metrics_url("http://gpu:9/v1", "") is None


def test_vllm_page_of_the_simulated_engine() -> None:
    core = EngineCore(EngineConfig(max_seqs=2))
    for i in range(5):
        core.add(Seq.of(tuple(range(i * 100, i * 100 + 20)), 8, 0.0, 16))
    core.step()
    page = sim_metrics.render(core, "sim-model").decode()
    assert parse(page) == EngineLoad(running=2, waiting=3)


def test_sglang_page_and_sums_over_labels() -> None:
    assert parse(SGLANG) == EngineLoad(running=12, waiting=3)
    two_models = (
        'vllm:num_requests_running{model_name="a"} 4\n'
        'vllm:num_requests_running{model_name="b"} 5\n'
        'vllm:num_requests_waiting{model_name="a"} 1\n'
        'vllm:num_requests_waiting{model_name="b"} NaN\n'
    )
    assert parse(two_models) == EngineLoad(running=9, waiting=1)


def test_pages_without_the_counts() -> None:
    assert parse("# nothing here\nprocess_cpu_seconds_total 3.5\n") is None
    assert parse("<html><body>Not found</body></html>") is None
    assert parse('vllm:num_requests_running{model_name="a"} 4\n') is None  # half of a pair
    with pytest.raises(ValueError):
        parse("vllm:num_requests_running{model_name=broken 4\nvllm:num_requests_waiting 0\n")


async def test_one_scrape_of_the_simulated_engine_reaches_the_limiter() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(256, 1, clock, scrape_interval=0.1)
    async with SimEngine(EngineConfig(max_seqs=2, speed=1)) as eng:
        scraper = Scraper("sim", eng.url + "/metrics", limiter, own=lambda: 5, active=lambda: True)
        # Requests that run for about a minute: two run, three wait.
        body = {"model": "sim-model", "prompt": "hello there", "max_tokens": 8000}
        async with aiohttp.ClientSession() as session:

            async def send() -> None:
                async with session.post(eng.base_url + "/completions", json=body) as resp:
                    await resp.read()

            sends = [asyncio.create_task(send()) for _ in range(5)]
            for _ in range(600):  # a deadline of 30 s, only against a hang
                if len(eng.core.running) == 2 and len(eng.core.waiting) == 3:
                    break
                await asyncio.sleep(0.05)
            loads = []
            for _ in range(EngineLoadLimit.LEARN_SCRAPES):  # a queue that lasts...
                limiter.done(limiter.sent())  # ...while other requests of lowtide's end
                loads.append(await scraper.scrape_once(session))
                clock.now += 0.1
            for task in sends:
                task.cancel()
            await asyncio.gather(*sends, return_exceptions=True)
    assert loads == [EngineLoad(running=2, waiting=3)] * len(loads)
    assert limiter.source() == "metrics" and limiter.capacity == 2
    assert scraper.failures == 0


async def test_a_page_that_is_not_there_falls_back_to_latency() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimit(256, 1, clock, scrape_interval=0.1)
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        scraper = Scraper("x", f"http://127.0.0.1:{port}/metrics", limiter, own=lambda: 0,
                          active=lambda: True)  # fmt: skip
        async with aiohttp.ClientSession() as session:
            assert await scraper.scrape_once(session) is None
    finally:
        await runner.cleanup()
    assert scraper.failures == 1 and limiter.source() == "latency"
