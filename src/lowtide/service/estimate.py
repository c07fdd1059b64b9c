"""``POST /batches/estimate``: what a batch of a file would take, before it runs
(docs/extensions.md, "Cost estimate"). The file is validated as a batch's would be (the same
validator and the same errors), nothing is dispatched, and nothing is stored."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import orjson

from lowtide import errors
from lowtide.backends.shaping import LIMIT_FIELDS, build_plan
from lowtide.backends.test_model import TEST_MODEL
from lowtide.backends.tokenize import count_tokens
from lowtide.blobs import BlobStore
from lowtide.domain import pace, validation, wire
from lowtide.domain.estimate import Estimate, Limit, LineScanner, Tally, tokenize_payload
from lowtide.domain.records import JsonDict, Usage
from lowtide.engine.pricing import pricing_of
from lowtide.engine.validating import file_problem, validation_limits
from lowtide.service.batches import parse_endpoint
from lowtide.settings import BackendSettings, Settings
from lowtide.store import Store

logger = logging.getLogger(__name__)

#: The test model's usage per line (its fixed answer: docs/api-compatibility.md, "Test model").
TEST_USAGE = (20, 6)
#: The model's pace is read from the batches that ended lines this recently.
PACE_SINCE = 3600


class EstimateService:
    def __init__(self, settings: Settings, store: Store, blobs: BlobStore) -> None:
        self.settings, self.store, self.blobs = settings, store, blobs

    async def estimate(self, account: str, params: Any) -> JsonDict:
        if not isinstance(params, dict):
            raise errors.InvalidRequest("The request body must be a JSON object.")
        endpoint = parse_endpoint(params.get("endpoint"))
        file_id = _input_file_id(params.get("input_file_id"))
        return wire.estimate_json(await self._estimate(account, file_id, endpoint))

    async def _estimate(self, account: str, file_id: str, endpoint: str) -> Estimate:
        file = await self.store.get_file(account, file_id)
        if file is None or file.purpose != "batch":
            problem = file_problem(file_id, file.purpose if file else None)
            return Estimate(file_id, endpoint, None, [problem])
        validator = validation.Validator(
            endpoint, self._serves, validation_limits(self.settings), prefix_order=False
        )
        tally = Tally(endpoint, LIMIT_FIELDS.get(endpoint, ()))
        scanner = LineScanner(tally)

        def feed(chunk: bytes) -> None:
            validator.feed(chunk)
            scanner.feed(chunk)

        async for chunk in self.blobs.stream(file.blob_key):
            # Parsing is CPU work: off the API's event loop, so that other calls go on.
            await asyncio.to_thread(feed, chunk)
        result = validator.finish()
        scanner.finish()
        model = result.model
        if not result.ok or model is None:
            errors_ = [e.to_dict() for e in result.errors]
            return Estimate(file_id, endpoint, model, errors_, lines=len(result.requests))
        base = Estimate(file_id, endpoint, model, None, lines=len(result.requests))
        if model == TEST_MODEL:
            return self._test_model(base)
        return await self._priced(base, tally, file.blob_key)

    def _serves(self, model: str) -> bool:
        return model != TEST_MODEL and model in self.settings.served_models()

    def _test_model(self, base: Estimate) -> Estimate:
        per_input, per_output = TEST_USAGE
        return replace(
            base,
            input_tokens=per_input * base.lines,
            input_tokens_method="test_model",
            output_tokens_max=per_output * base.lines,
            cost_min=0.0,
            cost_max=0.0,
            currency=self.settings.billing.currency,
            note="The test model answers every line at once, with fixed usage, free.",
        )

    async def _priced(self, base: Estimate, tally: Tally, blob_key: str) -> Estimate:
        model = base.model or ""
        tokens, method, counted = await self._input_tokens(model, tally, blob_key)
        ceiling, unbounded = tally.output_ceiling(self._limits(model, base.endpoint))
        pricing = pricing_of(self.settings, model)
        notes = []
        if unbounded:
            notes.append(
                f"{unbounded} line(s) set no output-token limit and the configuration gives "
                "their model no default: the output has no ceiling."
            )
        rate, why = await self._pace(model)
        if why:
            notes.append(why)
        return replace(
            base,
            input_tokens=tokens,
            input_tokens_method=method,
            tokenized_lines=counted,
            output_tokens_max=None if unbounded else ceiling,
            lines_without_max_tokens=unbounded,
            cost_min=pricing.cost(Usage(input_tokens=tokens)),
            cost_max=None if unbounded else pricing.cost(Usage(tokens, 0, ceiling)),
            currency=pricing.currency,
            lines_per_minute=round(rate * 60, 3) if rate else None,
            expected_seconds=round(base.lines / rate, 1) if rate else None,
            note=" ".join(notes) or None,
        )

    async def _input_tokens(self, model: str, tally: Tally, blob_key: str) -> tuple[int, str, int]:
        """(input tokens, how they were counted, lines a tokenizer counted)."""
        sample = tally.sample
        payloads = []
        for offset, length, _ in sample:
            line = orjson.loads(await self.blobs.read_range(blob_key, offset, length))
            payloads.append(tokenize_payload(line["body"], tally.endpoint))
        for backend in self._backends(model):
            counts = await count_tokens(backend, backend.model_aliases.get(model, model), payloads)
            if counts is None:
                continue
            if len(sample) == tally.lines:
                return sum(counts), "tokenize", len(counts)
            # The sample's tokens per approximated token scale the whole file's approximation.
            approx = sum(a for _, _, a in sample) or 1
            return round(tally.approx_tokens * sum(counts) / approx), "tokenize_sample", len(counts)
        return tally.approx_tokens, "characters", 0

    def _backends(self, model: str) -> list[BackendSettings]:
        return [b for b in self.settings.http_backends() if model in b.models]

    def _limits(self, model: str, endpoint: str) -> list[Limit]:
        """How each backend that serves the model limits a line's output tokens."""
        conf = self.settings.models.get(model)
        limits = []
        for backend in self._backends(model):
            plan = build_plan(model, backend, conf, endpoint)
            limits.append(Limit(plan.limit_fields, plan.limit_default, plan.limit_cap))
        return limits

    async def _pace(self, model: str) -> tuple[float | None, str | None]:
        """The model's recent pace in lines per second, or why there is none."""
        now = time.time()
        rows = await self.store.model_paces(model, int(now) - PACE_SINCE)
        rate = pace.model_per_second(rows, now)
        if rate:
            return rate, None
        return None, (
            f"No expected duration: no batch of {model} has run long enough in the last hour "
            "to tell its backends' pace."
        )


def _input_file_id(value: Any) -> str:
    if value is None:
        raise errors.InvalidRequest(
            "Missing required parameter: 'input_file_id'.",
            param="input_file_id",
            code="missing_required_parameter",
        )
    if not isinstance(value, str):
        raise errors.InvalidType(
            "Invalid type for 'input_file_id': expected a string.", param="input_file_id"
        )
    return value
