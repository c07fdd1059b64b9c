"""Each dialect end to end: a Model Studio-style batch run against a backend of that dialect
(the fake upstream, recording the bodies it received), and what comes back in the result lines.

The same three lines for every dialect, on a model with ``thinking = "off"``, a default
temperature and a ``max_tokens`` cap of 8:

- ``on``: thinking on with a budget, ``max_tokens`` 100 (over the cap);
- ``unsaid``: no switch, no limit (the model's default and the cap apply);
- ``effort``: OpenAI's spelling, ``reasoning_effort`` low and ``max_completion_tokens`` 4.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from lowtide.testing.upstream import FakeUpstream, UpstreamConfig
from tests.support.batches import ALICE, BOB, assert_each_once, chat_line

from .conftest import AppFactory, read_results, submit, wait_for

MODEL = "qwen3-8b"  # as the batch lines name it
SERVED = "Qwen/Qwen3-8B"  # as the backend knows it
REASONING = 3  # reasoning tokens the fake reports per answer (of its completion tokens)

LINES = [
    chat_line(
        "on", "say on", model=MODEL, enable_thinking=True, thinking_budget=50, max_tokens=100
    ),
    chat_line("unsaid", "say unsaid", model=MODEL),
    chat_line("effort", "say effort", model=MODEL, reasoning_effort="low", max_completion_tokens=4),
]
ON = {"chat_template_kwargs": {"enable_thinking": True}}
OFF = {"chat_template_kwargs": {"enable_thinking": False}}

#: What the backend receives for each line, besides model, messages and the default temperature.
SENT: dict[str, dict[str, dict[str, Any]]] = {
    "openai": {
        "on": {"max_completion_tokens": 8},
        "unsaid": {"reasoning_effort": "none", "max_completion_tokens": 8},
        "effort": {"reasoning_effort": "low", "max_completion_tokens": 4},
    },
    "vllm": {
        "on": {**ON, "thinking_token_budget": 50, "max_tokens": 8},
        "unsaid": {**OFF, "max_tokens": 8},
        "effort": {**ON, "reasoning_effort": "low", "max_completion_tokens": 4},
    },
    "sglang": {
        "on": {**ON, "max_tokens": 8},
        "unsaid": {**OFF, "max_tokens": 8},
        "effort": {**ON, "reasoning_effort": "low", "max_completion_tokens": 4},
    },
    "dashscope": {
        "on": {"enable_thinking": True, "thinking_budget": 50, "max_tokens": 8},
        "unsaid": {"enable_thinking": False, "max_tokens": 8},
        "effort": {"enable_thinking": True, "max_tokens": 4},
    },
    "ollama": {
        "on": {"max_tokens": 8},
        "unsaid": {"reasoning_effort": "none", "max_tokens": 8},
        "effort": {"reasoning_effort": "low", "max_tokens": 4},
    },
    "llamacpp": {
        "on": {**ON, "max_tokens": 8},
        "unsaid": {**OFF, "max_tokens": 8},
        "effort": {**ON, "max_tokens": 4},
    },
}


def config(up: FakeUpstream, dialect: str, *, record: bool = False) -> str:
    return f"""
[[api_keys]]
key = "{ALICE}"
account = "alice"

[[api_keys]]
key = "{BOB}"
account = "bob"

[[backends]]
name = "box"
base_url = "{up.base_url}"
api_key = "EMPTY"
dialect = "{dialect}"
models = ["{MODEL}"]
model_aliases = {{ "{MODEL}" = "{SERVED}" }}
timeout = 30

[models."{MODEL}"]
input_price = 0.8
output_price = 2.0
thinking = "off"
defaults = {{ temperature = 0.7 }}
overrides = {{ max_tokens = 8 }}

[engine]
max_attempts = 2
retry_base_delay = 0.05
retry_max_delay = 0.5
poll_interval = 0.05
commit_interval = 0.01
shutdown_grace = 0.5
record_sent_body = {"true" if record else "false"}
"""


@pytest.fixture
async def recording() -> Any:
    """The fake upstream, keeping the bodies it reads and answering with a reasoning text."""
    cfg = UpstreamConfig(
        seed=7,
        record_bodies=50,
        reasoning_tokens=REASONING,
        reasoning_field="reasoning_content",
    )
    async with FakeUpstream(cfg) as up:
        yield up


def by_line(bodies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bodies received, by the custom id their message names ("say <id>")."""
    return {body["messages"][-1]["content"].removeprefix("say "): body for body in bodies}


@pytest.mark.parametrize("dialect", sorted(SENT))
async def test_a_model_studio_batch_on_each_dialect(
    lowtide_app: AppFactory, recording: FakeUpstream, dialect: str
) -> None:
    c = (await lowtide_app(toml=config(recording, dialect))).client()
    batch = await wait_for(c, (await submit(c, LINES)).id)
    assert batch.status == "completed", batch
    outputs, errors = await read_results(c, batch)
    assert errors == []
    assert_each_once(LINES, outputs, errors)

    received = by_line(recording.bodies())
    for line in LINES:
        custom_id = line["custom_id"]
        expected = {
            "model": SERVED,
            "messages": line["body"]["messages"],
            "temperature": 0.7,
            **SENT[dialect][custom_id],
        }
        assert received[custom_id] == expected, custom_id

    # The reasoning text comes back as the backend sent it; its tokens are in the batch's
    # usage and billed as output tokens.
    for out in outputs:
        message = out["response"]["body"]["choices"][0]["message"]
        assert message["reasoning_content"].startswith("thinking: echo: say ")
        assert "sent_body" not in out
    completion = sum(o["response"]["body"]["usage"]["completion_tokens"] for o in outputs)
    prompt = sum(o["response"]["body"]["usage"]["prompt_tokens"] for o in outputs)
    assert completion == 8 + 8 + 4  # the cap, the cap, the line's own 4
    usage = batch.usage
    assert (usage.output_tokens, usage.output_tokens_details.reasoning_tokens) == (
        completion,
        3 * REASONING,
    )
    cost = (prompt * 0.8 + completion * 2.0) / 1e6 * 0.5
    assert batch.model_extra["cost"]["amount"] == pytest.approx(cost)


async def test_the_sent_body_is_in_the_result_lines_when_asked(
    lowtide_app: AppFactory, recording: FakeUpstream
) -> None:
    recording.configure(fail_contains="say unsaid")  # one line answered 400
    c = (await lowtide_app(toml=config(recording, "vllm", record=True))).client()
    batch = await wait_for(c, (await submit(c, LINES)).id)
    outputs, errors = await read_results(c, batch)
    assert [e["custom_id"] for e in errors] == ["unsaid"]
    received = by_line(recording.bodies())
    for result in outputs + errors:
        # The body exactly as the backend read it, after the usual keys of the line.
        assert list(result) == ["id", "custom_id", "response", "error", "sent_body"]
        assert result["sent_body"] == received[result["custom_id"]]
    assert errors[0]["response"]["status_code"] == 400


async def test_the_fake_serves_the_bodies_it_read(recording: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=recording.url) as http:
        sent = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": [1]}
        assert (await http.post("/v1/chat/completions", json=sent)).status_code == 200
        assert (await http.get("/_fake/bodies")).json() == {"bodies": [sent]}
        await http.post("/_fake/reset")
        assert (await http.get("/_fake/bodies")).json() == {"bodies": []}


# --- the recipes of docs/backends.md --------------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "backends.md"
#: How each dialect says "thinking off", and the name it gives the output-token limit.
OFF_AND_LIMIT: dict[str, tuple[dict[str, Any], str]] = {
    "openai": ({"reasoning_effort": "none"}, "max_completion_tokens"),
    "vllm": (OFF, "max_tokens"),
    "sglang": (OFF, "max_tokens"),
    "dashscope": ({"enable_thinking": False}, "max_tokens"),
    "ollama": ({"reasoning_effort": "none"}, "max_tokens"),
    "llamacpp": (OFF, "max_tokens"),
}


def recipes() -> list[str]:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [block for block in blocks if "[[backends]]" in block]


@pytest.mark.parametrize("recipe", recipes(), ids=lambda r: r.split('name = "')[1].split('"')[0])
async def test_each_recipe_sends_a_model_studio_line_its_way(
    lowtide_app: AppFactory, recording: FakeUpstream, recipe: str
) -> None:
    block = re.sub(r'base_url = "[^"]*"', f'base_url = "{recording.base_url}"', recipe)
    raw = tomllib.loads(block)
    (backend,) = raw["backends"]
    model = backend["models"][0]
    keys = f'[[api_keys]]\nkey = "{ALICE}"\naccount = "alice"\n'
    toml = f"{keys}\n{block}\n[engine]\npoll_interval = 0.05\n"
    c = (await lowtide_app(toml=toml)).client()
    ds_line = chat_line("q", "say q", model=model, enable_thinking=False, max_tokens=5)
    batch = await wait_for(c, (await submit(c, [ds_line])).id)
    assert batch.request_counts.completed == 1, batch
    (received,) = recording.bodies()
    off, limit = OFF_AND_LIMIT[backend["dialect"]]
    alias = backend.get("model_aliases", {}).get(model, model)
    assert received == {"model": alias, "messages": ds_line["body"]["messages"], **off, limit: 5}
