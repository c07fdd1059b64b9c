"""``POST /v1/batches/estimate`` through the ``openai`` SDK's generic ``post``: a file checked as a
batch's would be, its tokens counted by the backend's tokenizer (the simulated vLLM engine's
``/tokenize``) or from characters, the output ceiling from each line's limit and the model's
defaults, the cost range at the batch price, and the duration at the model's recent pace."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from lowtide.domain.estimate import MESSAGE_TOKENS
from lowtide.testing.engine_sim import EngineConfig, SimEngine
from lowtide.testing.engine_sim.tokens import chat_tokens
from lowtide.testing.upstream import FakeUpstream
from tests.support.batches import MODEL, TEST_URL, chat_line, ds_lines, jsonl

from .conftest import AppFactory, eventually, submit

PRICE = (0.8, 2.0, 0.5)  # per 1M input and output tokens, batch discount (config_toml)
DEFAULTS = f'\n[models."{MODEL}".defaults]\nmax_tokens = 100\n'


@pytest.fixture
async def engine() -> AsyncIterator[SimEngine]:
    async with SimEngine(EngineConfig(model=MODEL, speed=100.0)) as eng:
        yield eng


async def estimate(
    c: openai.AsyncOpenAI, data: bytes, endpoint: str = "/v1/chat/completions"
) -> Any:
    f = await c.files.create(file=("input.jsonl", data), purpose="batch")
    return await c.post(
        "/batches/estimate", cast_to=object, body={"input_file_id": f.id, "endpoint": endpoint}
    )


def lines_for(n: int, prefix: str = "e", **body: Any) -> list[dict[str, Any]]:
    return [
        chat_line(f"{prefix}-{i}", f"what is {i} plus {i} in words please", **body)
        for i in range(n)
    ]


def cost(input_tokens: int, output_tokens: int) -> float:
    return round((input_tokens * PRICE[0] + output_tokens * PRICE[1]) * PRICE[2] / 1e6, 10)


async def test_a_tokenizer_counts_every_line_of_a_small_file(
    lowtide_app: AppFactory, engine: SimEngine
) -> None:
    c = (await lowtide_app(engine)).client()
    lines = [chat_line(f"e-{i}", f"what is {i}", max_tokens=10 * (i + 1)) for i in range(10)]
    found = await estimate(c, jsonl(lines))
    exact = sum(len(chat_tokens(line["body"]["messages"])) for line in lines)
    assert found["object"] == "batch.estimate" and found["errors"] is None
    assert (found["model"], found["lines"]) == (MODEL, 10)
    assert (found["input_tokens"], found["input_tokens_method"]) == (exact, "tokenize")
    assert found["tokenized_lines"] == 10
    assert (found["output_tokens_max"], found["lines_without_max_tokens"]) == (550, 0)
    assert found["cost"] == {"min": cost(exact, 0), "max": cost(exact, 550), "currency": "USD"}
    # No batch of the model ran yet: no pace, and the note says so.
    assert found["expected_seconds"] is None and "pace" in found["note"]


async def test_a_tokenizer_counts_a_sample_of_a_larger_file(
    lowtide_app: AppFactory, engine: SimEngine
) -> None:
    c = (await lowtide_app(engine)).client()
    lines = lines_for(80, max_tokens=20)
    found = await estimate(c, jsonl(lines))
    exact = sum(len(chat_tokens(line["body"]["messages"])) for line in lines)
    assert found["input_tokens_method"] == "tokenize_sample" and found["tokenized_lines"] == 16
    assert found["input_tokens"] == pytest.approx(exact, rel=0.1)
    assert found["output_tokens_max"] == 1600


async def test_without_a_tokenizer_tokens_come_from_characters(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    # The fake backend has no /tokenize (404): the approximation; the model's configured
    # default limit is the ceiling of the lines that set none.
    c = (await lowtide_app(upstream, extra=DEFAULTS)).client()
    lines = [*lines_for(3), *lines_for(2, "f", max_tokens=7)]
    found = await estimate(c, jsonl(lines))
    approx = sum(
        math.ceil(len(line["body"]["messages"][0]["content"]) / 4) + MESSAGE_TOKENS
        for line in lines
    )
    assert (found["input_tokens"], found["input_tokens_method"]) == (approx, "characters")
    assert found["tokenized_lines"] == 0
    assert found["output_tokens_max"] == 3 * 100 + 2 * 7


async def test_lines_without_a_ceiling(lowtide_app: AppFactory, upstream: FakeUpstream) -> None:
    c = (await lowtide_app(upstream)).client()
    found = await estimate(c, jsonl([*lines_for(3), *lines_for(1, "f", max_tokens=5)]))
    assert found["output_tokens_max"] is None and found["lines_without_max_tokens"] == 3
    assert found["cost"]["max"] is None and found["cost"]["min"] > 0
    assert "3 line(s)" in found["note"]


async def test_the_test_model(lowtide_app: AppFactory) -> None:
    c = (await lowtide_app()).client()
    found = await estimate(c, jsonl(ds_lines(4)), endpoint=TEST_URL)
    assert (found["input_tokens"], found["output_tokens_max"]) == (80, 24)
    assert found["input_tokens_method"] == "test_model"
    assert found["cost"] == {"min": 0.0, "max": 0.0, "currency": "USD"}


async def test_a_file_that_would_fail_gets_the_batch_errors(
    lowtide_app: AppFactory, upstream: FakeUpstream
) -> None:
    app = await lowtide_app(upstream)
    c = app.client()
    bad = [*lines_for(2), chat_line("x", "hello", url="/v1/embeddings")]
    found = await estimate(c, jsonl(bad))
    assert found["errors"]["data"] == [
        {
            "code": "invalid_url",
            "message": "The URL provided for this request does not match the batch endpoint.",
            "param": "url",
            "line": 3,
        }
    ]
    assert found["input_tokens"] is None and found["cost"] is None
    missing = await c.post(
        "/batches/estimate",
        cast_to=object,
        body={"input_file_id": "file-batch-none", "endpoint": "/v1/chat/completions"},
    )
    assert [e["param"] for e in missing["errors"]["data"]] == ["input_file_id"]
    with pytest.raises(openai.BadRequestError) as raised:
        await c.post("/batches/estimate", cast_to=object, body={"input_file_id": "x"})
    assert raised.value.body["param"] == "endpoint"  # type: ignore[index]
    # Nothing was created: an estimate is not a batch.
    assert app.db("SELECT COUNT(*) FROM batches") == [(0,)]


async def test_the_expected_duration_follows_the_models_pace(
    lowtide_app: AppFactory, upstream: FakeUpstream, clock: Any
) -> None:
    upstream.configure(hang_contains="HANG")
    app = await lowtide_app(upstream, timeout=2.0, max_attempts=100)
    c = app.client()
    running = await submit(c, [*lines_for(6), chat_line("h", "HANG")])
    await eventually(
        lambda: app.db("SELECT completed FROM batches WHERE id = ?", running.id)[0][0] == 6,
        "six lines done",
    )
    clock.shift(60)  # six lines in about a minute: 6 a minute
    found = await estimate(c, jsonl(lines_for(12)))
    assert found["lines_per_minute"] == pytest.approx(6, rel=0.1)
    assert found["expected_seconds"] == pytest.approx(120, rel=0.1)
    batch = await c.batches.retrieve(running.id)
    assert (batch.model_extra or {})["lines_per_minute"] == pytest.approx(6, rel=0.1)
    await c.batches.cancel(running.id)
