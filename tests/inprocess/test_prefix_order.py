"""A shuffled file is sent grouped by shared prompt prefix ([scheduling] prefix_order, on by
default), and in file order with it off; results come in file order either way.

The backend is the simulated engine (lowtide.testing.engine_sim) in this process: it records
each request's arrival and prompt length. Every line of a group has the same system prompt and
a question of the same length, and the groups' prompts differ in length, so a request's prompt
length names its group. One slot (max_concurrency 1) makes arrival order the order of sending.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lowtide.testing.engine_sim import EngineConfig, SimEngine
from tests.support.batches import MODEL, chat_line

from .conftest import AppFactory, read_results, submit, wait_for

GROUPS = 3
PER_GROUP = 10


@pytest.fixture
async def engine() -> AsyncIterator[SimEngine]:
    # A KV cache of 512 tokens holds one group's prompt (300-380 tokens) at a time.
    config = EngineConfig(model=MODEL, speed=100.0, kv_tokens=512, max_model_len=512)
    async with SimEngine(config) as eng:
        yield eng


def recomputed(eng: SimEngine) -> int:
    """Requests whose system prompt was not all in the engine's prefix cache: more than the
    question, the chat template's tokens around it and a partial block were computed."""
    records = eng.stats(records=True)["records"]
    return sum(1 for r in records if r["prompt_tokens"] - r["cached_tokens"] > 32)


def shuffled_lines() -> tuple[list[dict[str, Any]], list[int]]:
    """The file (its lines' groups drawn at random) and the group of each line."""
    rng = random.Random(11)
    systems = [f"System {k}. " + " ".join(["word"] * (300 + 40 * k)) for k in range(GROUPS)]
    groups = [k for k in range(GROUPS) for _ in range(PER_GROUP)]
    rng.shuffle(groups)
    lines = []
    for i, k in enumerate(groups):
        line = chat_line(f"req-{i:03d}", f"Question {i:03d}", max_tokens=4)
        line["body"]["messages"].insert(0, {"role": "system", "content": systems[k]})
        lines.append(line)
    return lines, groups


def runs(labels: list[int]) -> int:
    return sum(1 for i, label in enumerate(labels) if i == 0 or label != labels[i - 1])


async def arrivals(eng: SimEngine) -> list[int]:
    """The prompt length of each request the engine saw, in the order they arrived."""
    records = sorted(eng.stats(records=True)["records"], key=lambda r: r["arrival"])
    return [r["prompt_tokens"] for r in records]


async def run(lowtide_app: AppFactory, eng: SimEngine, extra: str) -> list[int]:
    lines, _ = shuffled_lines()
    c = (await lowtide_app(eng, max_concurrency=1, extra=extra)).client()
    batch = await wait_for(c, (await submit(c, lines)).id, patience=120)
    assert batch.status == "completed" and batch.request_counts.completed == len(lines)
    outputs, errors = await read_results(c, batch)
    assert errors == [] and [o["custom_id"] for o in outputs] == [x["custom_id"] for x in lines]
    seen = await arrivals(eng)
    assert len(seen) == len(lines) and len(set(seen)) == GROUPS  # a length per group
    group_of = {
        length: group for length, group in zip(sorted(set(seen)), range(GROUPS), strict=True)
    }
    return [group_of[length] for length in seen]


async def test_a_shuffled_file_is_sent_grouped_by_prefix(
    lowtide_app: AppFactory, engine: SimEngine
) -> None:
    _, groups = shuffled_lines()
    assert runs(groups) > 2 * GROUPS  # the file is well shuffled
    sent = await run(lowtide_app, engine, extra="")  # prefix_order is on by default
    assert runs(sent) == GROUPS  # each group's lines one after another
    assert sorted(sent) == sorted(groups)
    # Each group's prompt was computed once: every later line found it in the prefix cache.
    assert recomputed(engine) == GROUPS


async def test_prefix_order_off_sends_in_file_order(
    lowtide_app: AppFactory, engine: SimEngine
) -> None:
    _, groups = shuffled_lines()
    sent = await run(lowtide_app, engine, extra="[scheduling]\nprefix_order = false\n")
    assert sent == groups
    # A cache that holds one prompt: a prompt is computed again (in part) after another group.
    assert recomputed(engine) > GROUPS
