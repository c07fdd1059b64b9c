"""What happens to a request body between the batch line and the backend, per backend and model.

In this order: the line's thinking request is read, whatever its spelling; fields the line
lacks are filled from the defaults; the overrides are set; then the backend's dialect writes
the thinking request and the output-token limit its own way (``lowtide.backends.dialects``).
Precedence, strongest first (docs/backends.md, "Defaults and overrides"):

1. ``[[backends]].overrides``, then ``[models."X"].overrides`` (always applied);
2. the line's own value;
3. ``[[backends]].defaults``, then ``[models."X"].defaults`` and ``[models."X"].thinking``
   (applied to a field the line lacks);
4. the backend's own default (nothing is sent).

The output-token limit (``max_tokens``, whatever the endpoint calls it) is one field: an
override of it is a cap (the line's value, or the cap where the line has none, never more),
and the least of both caps holds. The thinking switch, budget and effort are three fields,
whatever their spelling.

A ``Plan`` holds all of it for one (backend, model, endpoint), built once; on the hot path it
costs a few dictionary lookups per request (bench/dispatch.py, docs/backends.md).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from lowtide.backends.base import Backend
from lowtide.backends.dialects import DIALECTS, NOTHING, Dialect, Thinking, read_thinking
from lowtide.domain.work import RETRY, Outcome
from lowtide.settings import BackendSettings, ModelSettings, Settings

logger = logging.getLogger(__name__)

CHAT: Final = "/v1/chat/completions"
#: The names of the output-token limit on each endpoint; a default or a cap is written under
#: the last one (the dialect renames it where its backend reads another).
LIMIT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    CHAT: ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}
#: Config keys that stand for the output-token limit (settings allow one per table).
_LIMIT_KEYS: Final = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})
_THINKING_KEYS: Final = frozenset({"enable_thinking", "thinking_budget", "reasoning_effort"})
_SWITCH_OF_MODE: Final = {"on": True, "off": False, "backend": None}

Final5xx = Callable[[int, Any], bool]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything done to the bodies of one model's lines on one backend at one endpoint."""

    #: The name the backend knows the model by.
    model: str
    defaults: tuple[tuple[str, Any], ...] = ()
    overrides: tuple[tuple[str, Any], ...] = ()
    limit_fields: tuple[str, ...] = ()
    limit_default: int | None = None
    limit_cap: int | None = None
    thinking_default: Thinking = NOTHING
    thinking_override: Thinking = NOTHING
    #: None where there is nothing to translate (not a chat request).
    dialect: Dialect | None = None
    #: An error answer that is final although its status is retryable (``Dialect.final``).
    final: Final5xx | None = None
    #: Record the body as sent in the result line (``engine.record_sent_body``).
    record: bool = False
    #: The thinking request of a line that makes none (``NOTHING``: the plan decides nothing).
    thinking_unsaid: Thinking = dataclasses.field(init=False, default=NOTHING)

    def shape(self, body: dict[str, Any]) -> None:
        """Apply the defaults, overrides and dialect to ``body`` (the line's, parsed)."""
        dialect = self.dialect
        thinking = read_thinking(body, dialect.native) if dialect is not None else NOTHING
        for key, value in self.defaults:
            if key not in body:
                body[key] = value
        if self.limit_fields:
            self._limit(body)
        for key, value in self.overrides:
            body[key] = value
        if dialect is not None:
            if thinking is NOTHING:  # the common case, decided when the plan was made
                thinking = self.thinking_unsaid
            elif self.thinking_unsaid is not NOTHING:
                thinking = _decide(thinking, self.thinking_default, self.thinking_override)
            dialect.write(body, thinking)

    def __post_init__(self) -> None:
        unsaid = _over(self.thinking_override, self.thinking_default)
        object.__setattr__(self, "thinking_unsaid", unsaid)

    def _limit(self, body: dict[str, Any]) -> None:
        given = False
        cap = self.limit_cap
        for name in self.limit_fields:
            value = body.get(name)
            if value is None:
                continue
            given = True
            if cap is not None and type(value) is int and value > cap:
                body[name] = cap
        if not given:
            limit = self.limit_default if cap is None else min(cap, self.limit_default or cap)
            if limit is not None:
                for name in self.limit_fields:
                    body.pop(name, None)  # an explicit null: no limit given
                body[self.limit_fields[-1]] = limit

    def recorded(self, outcome: Outcome, sent: bytes) -> Outcome:
        """``outcome`` with the body as sent, if asked to record it (not on a retry: only the
        final outcome becomes a result line)."""
        if not self.record or outcome.kind == RETRY:
            return outcome
        return dataclasses.replace(outcome, sent_body=sent)


def _decide(line: Thinking, default: Thinking, override: Thinking) -> Thinking:
    """Per field: the override, else the line's, else the default."""
    return _over(override, _over(line, default))


class Shaping:
    """The plans of every (backend, model, endpoint), built from the settings when first asked."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._backends = {b.name: b for b in settings.backends} if settings else {}
        self._models: Mapping[str, ModelSettings] = settings.models if settings else {}
        self._record = settings.engine.record_sent_body if settings else False
        self._plans: dict[tuple[str, str, str], Plan] = {}
        for backend in self._backends.values():
            if "dialect" not in backend.model_fields_set:
                logger.warning(
                    "backend %s has no dialect: its chat lines are written as OpenAI's API "
                    "reads them (max_tokens sent as max_completion_tokens, a thinking switch "
                    'as reasoning_effort). Set dialect = "vllm", "sglang", "ollama", '
                    '"llamacpp" or "dashscope" for those servers, or "openai" to say so '
                    "(docs/backends.md)",
                    backend.name,
                    extra={"action": "backend_dialect_default", "backend": backend.name},
                )

    def plan(self, backend: Backend, model: str, endpoint: str) -> Plan:
        key = (backend.name, model, endpoint)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build(backend, model, endpoint)
        return plan

    def _build(self, backend: Backend, model: str, endpoint: str) -> Plan:
        name = backend.model_name(model)
        conf = self._backends.get(backend.name)
        if conf is None:  # the built-in test model: no body is really sent
            return Plan(name)
        return build_plan(name, conf, self._models.get(model), endpoint, record=self._record)


def build_plan(
    name: str,
    backend: BackendSettings,
    model: ModelSettings | None,
    endpoint: str,
    *,
    record: bool = False,
) -> Plan:
    """The plan of ``model``'s lines on ``backend`` at ``endpoint``, sent as ``name``."""
    model = model or ModelSettings()
    dialect = DIALECTS[backend.dialect]
    limit_fields = LIMIT_FIELDS.get(endpoint, ())
    chat = endpoint == CHAT
    # Backend defaults over model defaults; backend overrides over model overrides.
    defaults = {**_plain(model.defaults), **_plain(backend.defaults)}
    overrides = {**_plain(model.overrides), **_plain(backend.overrides)}
    caps = [c for c in (_limit_of(model.overrides), _limit_of(backend.overrides)) if c]
    mode = Thinking(switch=_SWITCH_OF_MODE[model.thinking])
    return Plan(
        model=name,
        defaults=tuple(defaults.items()),
        overrides=tuple(overrides.items()),
        limit_fields=limit_fields,
        limit_default=_limit_of(backend.defaults) or _limit_of(model.defaults),
        limit_cap=min(caps) if caps else None,
        thinking_default=_over(
            _thinking_of(backend.defaults), _over(_thinking_of(model.defaults), mode)
        )
        if chat
        else NOTHING,
        thinking_override=_over(_thinking_of(backend.overrides), _thinking_of(model.overrides))
        if chat
        else NOTHING,
        dialect=dialect if chat else None,
        final=dialect.final,
        record=record,
    )


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields set as they are: not the limit, not the thinking request (handled apart)."""
    return {k: v for k, v in fields.items() if k not in _LIMIT_KEYS and k not in _THINKING_KEYS}


def _limit_of(fields: dict[str, Any]) -> int | None:
    return next((v for k, v in fields.items() if k in _LIMIT_KEYS), None)


def _thinking_of(fields: dict[str, Any]) -> Thinking:
    """The thinking request of a config table, read as a line's would be: an effort turns
    thinking on, and the effort ``none`` turns it off."""
    switch, effort = fields.get("enable_thinking"), fields.get("reasoning_effort")
    if effort is not None and switch is None:
        switch = effort != "none"
    return Thinking(switch, fields.get("thinking_budget"), None if effort == "none" else effort)


def _over(strong: Thinking, weak: Thinking) -> Thinking:
    """Per field, ``strong``'s else ``weak``'s; the same ``NOTHING`` when neither says a thing
    (a plan tells by identity that it decides nothing about thinking)."""
    if not weak:
        return strong if strong else NOTHING
    if not strong:
        return weak
    return Thinking(
        strong.switch if strong.switch is not None else weak.switch,
        strong.budget if strong.budget is not None else weak.budget,
        strong.effort if strong.effort is not None else weak.effort,
    )
