"""Dialects, defaults and overrides: what a body becomes on its way to each kind of backend.

Table-driven: each row is a line's body (the fields that matter; ``messages`` and ``model`` are
added), the dialect, and the body the backend must receive. The rows are the table of
docs/backends.md, one by one.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from lowtide.backends.base import Reply
from lowtide.backends.dialects import DIALECTS, Thinking, read_thinking
from lowtide.backends.shaping import CHAT, Plan, Shaping, build_plan
from lowtide.domain import lines
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, Claim
from lowtide.engine import outcomes
from lowtide.settings import BackendSettings, ModelSettings, Settings

BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DASHSCOPE_OFF = {"enable_thinking": False, "thinking_budget": 200, "max_tokens": 64}
DASHSCOPE_ON = {"enable_thinking": True, "thinking_budget": 200, "max_tokens": 64}
TEMPLATE_OFF = {"chat_template_kwargs": {"enable_thinking": False, "keep": 1}}
OPENAI_HIGH = {"reasoning_effort": "high", "max_completion_tokens": 100}
PLAIN = {"top_k": 20, "temperature": 0.6, "max_tokens": 16, "x_unknown": {"a": [1]}}

ROWS: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    # --- openai: reasoning_effort, max_completion_tokens; no budget
    ("ds-off", "openai", DASHSCOPE_OFF, {"reasoning_effort": "none", "max_completion_tokens": 64}),
    ("ds-on", "openai", DASHSCOPE_ON, {"max_completion_tokens": 64}),
    (
        "template",
        "openai",
        TEMPLATE_OFF,
        {"chat_template_kwargs": {"keep": 1}, "reasoning_effort": "none"},
    ),
    ("think-high", "openai", {"think": "high"}, {"reasoning_effort": "high"}),
    ("effort", "openai", OPENAI_HIGH, OPENAI_HIGH),
    ("plain", "openai", PLAIN, {**PLAIN, "max_tokens": None, "max_completion_tokens": 16}),
    (
        "both-limits",
        "openai",
        {"max_tokens": 10, "max_completion_tokens": 20},
        {"max_completion_tokens": 20},
    ),
    # --- vllm: chat_template_kwargs, thinking_token_budget, reasoning_effort; both limits
    (
        "ds-off",
        "vllm",
        DASHSCOPE_OFF,
        {"chat_template_kwargs": {"enable_thinking": False}, "max_tokens": 64},
    ),
    (
        "ds-on",
        "vllm",
        DASHSCOPE_ON,
        {
            "chat_template_kwargs": {"enable_thinking": True},
            "thinking_token_budget": 200,
            "max_tokens": 64,
        },
    ),
    ("template", "vllm", TEMPLATE_OFF, TEMPLATE_OFF),
    ("think-off", "vllm", {"think": False}, {"chat_template_kwargs": {"enable_thinking": False}}),
    (
        "effort-none",
        "vllm",
        {"reasoning_effort": "none"},
        {"chat_template_kwargs": {"enable_thinking": False}},
    ),
    (
        "effort",
        "vllm",
        OPENAI_HIGH,
        {
            "chat_template_kwargs": {"enable_thinking": True},
            "reasoning_effort": "high",
            "max_completion_tokens": 100,
        },
    ),
    ("plain", "vllm", PLAIN, PLAIN),
    (
        "both-limits",
        "vllm",
        {"max_tokens": 10, "max_completion_tokens": 20},
        {"max_tokens": 10, "max_completion_tokens": 20},
    ),
    # --- sglang: as vllm, but no budget
    (
        "ds-on",
        "sglang",
        DASHSCOPE_ON,
        {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": 64},
    ),
    ("template", "sglang", TEMPLATE_OFF, TEMPLATE_OFF),
    (
        "effort",
        "sglang",
        OPENAI_HIGH,
        {
            "chat_template_kwargs": {"enable_thinking": True},
            "reasoning_effort": "high",
            "max_completion_tokens": 100,
        },
    ),
    ("plain", "sglang", PLAIN, PLAIN),
    # --- dashscope: enable_thinking, thinking_budget, max_tokens; no effort levels
    ("ds-off", "dashscope", DASHSCOPE_OFF, {"enable_thinking": False, "max_tokens": 64}),
    ("ds-on", "dashscope", DASHSCOPE_ON, DASHSCOPE_ON),
    (
        "template",
        "dashscope",
        TEMPLATE_OFF,
        {"chat_template_kwargs": {"keep": 1}, "enable_thinking": False},
    ),
    ("vllm-budget", "dashscope", {"thinking_token_budget": 50}, {"thinking_budget": 50}),
    ("effort", "dashscope", OPENAI_HIGH, {"enable_thinking": True, "max_tokens": 100}),
    ("think-off", "dashscope", {"think": False}, {"enable_thinking": False}),
    ("plain", "dashscope", PLAIN, PLAIN),
    # --- ollama (its /v1 API): reasoning_effort ("none" is off), max_tokens; no budget
    ("ds-off", "ollama", DASHSCOPE_OFF, {"reasoning_effort": "none", "max_tokens": 64}),
    ("ds-on", "ollama", DASHSCOPE_ON, {"max_tokens": 64}),
    ("think-off", "ollama", {"think": False}, {"reasoning_effort": "none"}),
    (
        "template",
        "ollama",
        TEMPLATE_OFF,
        {"chat_template_kwargs": {"keep": 1}, "reasoning_effort": "none"},
    ),
    ("effort", "ollama", OPENAI_HIGH, {"reasoning_effort": "high", "max_tokens": 100}),
    ("plain", "ollama", PLAIN, PLAIN),
    # --- llamacpp: chat_template_kwargs, max_tokens; no budget, no effort
    (
        "ds-off",
        "llamacpp",
        DASHSCOPE_OFF,
        {"chat_template_kwargs": {"enable_thinking": False}, "max_tokens": 64},
    ),
    (
        "effort",
        "llamacpp",
        OPENAI_HIGH,
        {"chat_template_kwargs": {"enable_thinking": True}, "max_tokens": 100},
    ),
    ("template", "llamacpp", TEMPLATE_OFF, TEMPLATE_OFF),
    ("plain", "llamacpp", PLAIN, PLAIN),
    (
        "both-limits",
        "llamacpp",
        {"max_tokens": 10, "max_completion_tokens": 20},
        {"max_tokens": 10},
    ),
]


def backend(dialect: str = "openai", **settings: Any) -> BackendSettings:
    return BackendSettings(
        name="b", base_url="http://127.0.0.1:1/v1", models=["m"], dialect=dialect, **settings
    )  # type: ignore[arg-type]


def shaped(
    body: dict[str, Any],
    dialect: str = "openai",
    model: ModelSettings | None = None,
    endpoint: str = CHAT,
    **settings: Any,
) -> dict[str, Any]:
    plan = build_plan("m", backend(dialect, **settings), model, endpoint)
    out = {**BASE, **orjson.loads(orjson.dumps(body))}  # a fresh copy, as the dispatcher parses
    plan.shape(out)
    return out


@pytest.mark.parametrize(
    ("name", "dialect", "line", "sent"), ROWS, ids=[f"{r[1]}-{r[0]}" for r in ROWS]
)
def test_dialect_table(name: str, dialect: str, line: dict[str, Any], sent: dict[str, Any]) -> None:
    expected = {**BASE, **{k: v for k, v in sent.items() if v is not None}}
    assert shaped(line, dialect) == expected


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_a_line_without_thinking_or_limits_is_sent_as_it_is(dialect: str) -> None:
    line = {"temperature": 0, "x_vendor": {"nested": [1, 2]}, "chat_template_kwargs": {"a": 1}}
    assert shaped(line, dialect) == {**BASE, **line}


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize(
    "odd",
    [
        {"enable_thinking": "false"},  # a string, not a switch
        {"chat_template_kwargs": "x"},
        {"chat_template_kwargs": {"enable_thinking": 0}},
        {"think": ["high"]},
        {"think": "deep"},
        {"reasoning_effort": 3},
        {"thinking_budget": -1},
        {"thinking_budget": True},
    ],
)
def test_a_value_of_the_wrong_type_is_no_request_and_stays(
    dialect: str, odd: dict[str, Any]
) -> None:
    assert shaped(odd, dialect) == {**BASE, **odd}


def test_the_native_spelling_wins_when_a_line_spells_the_switch_twice() -> None:
    both = {"enable_thinking": False, "chat_template_kwargs": {"enable_thinking": True}}
    assert shaped(both, "dashscope") == {**BASE, "enable_thinking": False}
    assert shaped(both, "vllm") == {**BASE, "chat_template_kwargs": {"enable_thinking": True}}
    # Neither native (OpenAI's is reasoning_effort): the order of THINKING_KEYS.
    assert shaped(both, "openai") == {**BASE, "reasoning_effort": "none"}


def test_read_thinking_takes_every_spelling_out() -> None:
    body = {
        "think": "low",
        "thinking_token_budget": 9,
        "chat_template_kwargs": {"enable_thinking": True},
    }
    assert read_thinking(body, "enable_thinking") == Thinking(True, 9, "low")
    assert body == {}
    assert read_thinking({"reasoning_effort": "none"}, "x") == Thinking(False, None, None)
    assert not read_thinking({"messages": []}, "x")


def test_other_endpoints_keep_their_thinking_fields_and_limit_names() -> None:
    line = {"enable_thinking": False, "max_tokens": 5, "max_output_tokens": 7}
    for endpoint in ("/v1/completions", "/v1/responses", "/v1/embeddings"):
        assert shaped(line, "vllm", endpoint=endpoint) == {**BASE, **line}
        assert shaped(line, "openai", endpoint=endpoint) == {**BASE, **line}


# --- defaults, overrides, thinking -------------------------------------------------------------


def test_defaults_fill_what_the_line_lacks_backend_before_model() -> None:
    model = ModelSettings(defaults={"temperature": 0.7, "top_p": 0.8, "max_tokens": 100})
    sent = shaped({"top_p": 0.1}, "vllm", model, defaults={"temperature": 0.2})
    assert sent == {**BASE, "top_p": 0.1, "temperature": 0.2, "max_tokens": 100}
    # The limit is one field: a line with max_completion_tokens has a limit.
    assert shaped({"max_completion_tokens": 9}, "vllm", model)["max_completion_tokens"] == 9
    assert "max_tokens" not in shaped({"max_completion_tokens": 9}, "vllm", model)


def test_overrides_always_win_backend_over_model() -> None:
    model = ModelSettings(overrides={"temperature": 0.0, "seed": 7})
    sent = shaped({"temperature": 1.5, "seed": 1}, "vllm", model, overrides={"seed": 42})
    assert (sent["temperature"], sent["seed"]) == (0.0, 42)


@pytest.mark.parametrize(
    ("line", "model_cap", "backend_cap", "sent"),
    [
        ({"max_tokens": 5000}, 1000, None, {"max_tokens": 1000}),  # over the cap: cut
        ({"max_tokens": 50}, 1000, None, {"max_tokens": 50}),  # under: kept
        ({}, 1000, None, {"max_tokens": 1000}),  # none: the cap
        ({"max_completion_tokens": 5000}, 1000, 300, {"max_completion_tokens": 300}),  # least cap
        ({"max_tokens": None}, 1000, None, {"max_tokens": 1000}),  # null is no limit
        ({"max_tokens": "abc"}, 1000, None, {"max_tokens": "abc"}),  # the backend says no
    ],
)
def test_a_max_tokens_override_is_a_cap(
    line: dict[str, Any], model_cap: int, backend_cap: int | None, sent: dict[str, Any]
) -> None:
    model = ModelSettings(overrides={"max_tokens": model_cap})
    extra = {"overrides": {"max_completion_tokens": backend_cap}} if backend_cap else {}
    assert shaped(line, "vllm", model, **extra) == {**BASE, **sent}


def test_a_cap_holds_over_a_larger_default_and_is_renamed_by_the_dialect() -> None:
    model = ModelSettings(defaults={"max_tokens": 4000}, overrides={"max_tokens": 500})
    assert shaped({}, "openai", model) == {**BASE, "max_completion_tokens": 500}
    responses = shaped({"input": "x"}, "openai", model, endpoint="/v1/responses")
    assert responses["max_output_tokens"] == 500 and "max_tokens" not in responses
    assert "max_tokens" not in shaped({"input": "x"}, "openai", model, endpoint="/v1/embeddings")


@pytest.mark.parametrize(
    ("mode", "line", "dashscope_sees"),
    [
        ("off", {}, {"enable_thinking": False}),
        ("on", {}, {"enable_thinking": True}),
        ("backend", {}, {}),
        ("off", {"enable_thinking": True}, {"enable_thinking": True}),  # the line's switch wins
        ("off", {"chat_template_kwargs": {"enable_thinking": True}}, {"enable_thinking": True}),
        ("on", {"reasoning_effort": "none"}, {"enable_thinking": False}),
        ("off", {"thinking_budget": 10}, {"enable_thinking": False}),  # a budget is no switch
    ],
)
def test_the_model_thinking_default(
    mode: str, line: dict[str, Any], dashscope_sees: dict[str, Any]
) -> None:
    model = ModelSettings(thinking=mode)  # type: ignore[arg-type]
    assert shaped(line, "dashscope", model) == {**BASE, **dashscope_sees}


def test_thinking_precedence_override_line_backend_default_model_default() -> None:
    model = ModelSettings(thinking="off", overrides={"thinking_budget": 64})
    # The backend's default beats the model's for a line without a switch...
    assert shaped({}, "vllm", model, defaults={"enable_thinking": True}) == {
        **BASE,
        "chat_template_kwargs": {"enable_thinking": True},
        "thinking_token_budget": 64,
    }
    # ...the line beats both defaults, and an override beats the line.
    sent = shaped({"enable_thinking": True}, "vllm", model, overrides={"enable_thinking": False})
    assert sent == {**BASE, "chat_template_kwargs": {"enable_thinking": False}}
    # An effort in the config turns thinking on ("none": off), as in a line.
    assert shaped({}, "dashscope", None, defaults={"reasoning_effort": "none"}) == {
        **BASE,
        "enable_thinking": False,
    }


def test_an_override_of_chat_template_kwargs_is_never_changed_in_place() -> None:
    plan = build_plan(
        "m",
        backend("vllm", overrides={"chat_template_kwargs": {"x": 1}}),
        ModelSettings(thinking="off"),
        CHAT,
    )
    for _ in range(2):
        body = dict(BASE)
        plan.shape(body)
        assert body["chat_template_kwargs"] == {"x": 1, "enable_thinking": False}
    assert plan.overrides == (("chat_template_kwargs", {"x": 1}),)


def test_the_test_model_and_unknown_backends_get_an_empty_plan() -> None:
    class TestBackend:
        name = "builtin-test-model"

        def model_name(self, model: str) -> str:
            return model

    plan = Shaping(Settings()).plan(TestBackend(), "batch-test-model", "/v1/chat/ds-test")  # type: ignore[arg-type]
    assert plan == Plan("batch-test-model")
    body = {"model": "batch-test-model", "enable_thinking": False}
    plan.shape(body)
    assert body == {"model": "batch-test-model", "enable_thinking": False}


def test_a_backend_without_a_dialect_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    raw = {"name": "x", "base_url": "http://127.0.0.1:1/v1", "models": ["m"]}
    Shaping(Settings.model_validate({"backends": [raw, {**raw, "name": "y", "dialect": "openai"}]}))
    warned = [r.getMessage() for r in caplog.records if "has no dialect" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("backend x ")


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"model": "x"}, "the batch line decides it"),
        ({"stream": True}, "the batch line decides it"),
        ({"think": False}, "'enable_thinking'"),
        ({"chat_template_kwargs": {"enable_thinking": False}}, "'enable_thinking'"),
        ({"thinking_token_budget": 5}, "'thinking_budget'"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "one limit"),
        ({"max_tokens": 0}, "at least 1"),
        ({"max_tokens": "5"}, "whole number"),
        ({"thinking_budget": -1}, "at least 0"),
        ({"enable_thinking": "no"}, "true or false"),
        ({"reasoning_effort": 1}, "a string"),
    ],
)
def test_bad_tables_are_refused(table: dict[str, Any], says: str) -> None:
    for where in ("defaults", "overrides"):
        with pytest.raises(ValidationError, match=says):
            backend(**{where: table})
        with pytest.raises(ValidationError, match=says):
            ModelSettings(**{where: table})


def test_a_model_says_its_thinking_default_once() -> None:
    with pytest.raises(ValidationError, match="not both"):
        ModelSettings(thinking="off", defaults={"enable_thinking": True})
    with pytest.raises(ValidationError):
        backend("vllm2")


# --- answers ---------------------------------------------------------------------------------

# Bodies llama-cpp-python 0.3.36 answered with 500 here (tests/realengine measures them again).
VALIDATION_500 = (
    "1 validation error:\n  {'type': 'less_than_equal', 'loc': ('body', 'top_p'), 'msg': 'Input "
    "should be less than or equal to 1', 'input': 5, 'ctx': {'le': 1.0}}\n\n  File \"app.py\""
)


def error_body(message: str, type_: str = "internal_server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


@pytest.mark.parametrize(
    ("status", "body", "final"),
    [
        (500, error_body(VALIDATION_500), True),
        (
            500,
            error_body(
                "7 validation errors:\n  {'type': 'literal_error', 'loc': ('body', 'messages', 0)"
            ),
            True,
        ),
        (500, error_body("invalid literal for int() with base 10: 'hello'"), True),
        (
            500,
            {
                "error": {
                    "code": 500,
                    "message": "[json.exception.type_error.302] type must be number",
                }
            },
            True,
        ),
        (500, error_body("1 validation error:\n  {'type': 'x', 'loc': ('query', 'a')}"), False),
        (500, error_body("CUDA error: out of memory"), False),  # the server's trouble: retry
        (500, None, False),  # "Internal Server Error" in plain text
        (502, error_body(VALIDATION_500), False),
        (503, error_body(VALIDATION_500), False),
    ],
)
def test_llamacpp_knows_which_500s_are_the_requests_fault(
    status: int, body: Any, final: bool
) -> None:
    classify = DIALECTS["llamacpp"].final
    assert classify is not None and classify(status, body) is final
    assert all(d.final is None for name, d in DIALECTS.items() if name != "llamacpp")


def claim(attempts: int = 0) -> Claim:
    return Claim("batch_1", 3, "q3", 0, 10, attempts, 1)


def test_a_final_500_fails_at_once_with_the_backends_status_and_body() -> None:
    raw = orjson.dumps(error_body(VALIDATION_500))
    reply = Reply(500, raw, request_id="r1")
    policy = outcomes.RetryPolicy(max_attempts=5)
    classify = DIALECTS["llamacpp"].final
    assert outcomes.from_reply(claim(), reply, policy).kind == RETRY  # without the dialect
    outcome = outcomes.from_reply(claim(), reply, policy, classify)
    assert (outcome.kind, outcome.status_code, outcome.attempts) == (FAILED, 500, 1)
    assert outcome.error_code == "internal_server_error"
    assert outcome.error_message == VALIDATION_500  # one attempt: no "(after N attempts)"
    assert outcome.body == raw
    other = Reply(500, orjson.dumps(error_body("CUDA error: out of memory")))
    assert outcomes.from_reply(claim(), other, policy, classify).kind == RETRY


def test_the_sent_body_is_recorded_after_the_usual_keys_only_when_asked() -> None:
    answer = b'{"id":"c1","usage":{"prompt_tokens":3,"completion_tokens":2}}'
    ok = outcomes.from_reply(claim(), Reply(200, answer), outcomes.RetryPolicy())
    sent = b'{"model":"m","max_tokens":5}'
    assert Plan("m").recorded(ok, sent) is ok
    recorded = Plan("m", record=True).recorded(ok, sent)
    line = orjson.loads(lines.outcome_line(recorded) or b"")
    assert list(line) == ["id", "custom_id", "response", "error", "sent_body"]
    assert line["sent_body"] == {"model": "m", "max_tokens": 5}
    assert line["response"]["body"] == orjson.loads(answer)
    assert "sent_body" not in orjson.loads(lines.outcome_line(ok) or b"")
    retry = outcomes.from_reply(claim(), Reply(503, b"{}"), outcomes.RetryPolicy())
    assert Plan("m", record=True).recorded(retry, sent).sent_body is None


def test_reasoning_tokens_are_counted_from_the_usage_details() -> None:
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 40,
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    body = {
        "choices": [{"message": {"content": "4", "reasoning_content": "2+2..."}}],
        "usage": usage,
    }
    outcome = outcomes.from_reply(claim(), Reply(200, orjson.dumps(body)), outcomes.RetryPolicy())
    assert (outcome.kind, outcome.output_tokens, outcome.reasoning_tokens) == (SUCCEEDED, 40, 30)
    assert orjson.loads(outcome.body or b"") == body  # reasoning_content kept as it came


# --- docs/backends.md ------------------------------------------------------------------------

DOC = Path(__file__).parents[2] / "docs" / "backends.md"


def test_every_toml_block_of_the_backends_page_is_a_valid_config() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    dialects = set()
    for block in blocks:
        settings = Settings.model_validate(tomllib.loads(block))
        for b in settings.backends:
            assert "dialect" in b.model_fields_set, f"recipe {b.name} names no dialect"
            dialects.add(b.dialect)
    assert dialects == set(DIALECTS), "a recipe per dialect"


def test_the_dialect_table_has_a_row_per_dialect() -> None:
    rows = re.findall(r"^\| `([a-z]+)` \| ", DOC.read_text(), flags=re.M)
    assert rows == list(DIALECTS)
