"""The simulated engine's parameters: what it models, with defaults from published figures.

Every field is also a command-line flag (``--max-seqs``) of ``python -m
lowtide.testing.engine_sim``; the help text beside each field is the flag's help. The defaults
model Llama-3.1-8B-Instruct in bf16 on one H100 80GB SXM served by vLLM with its default
settings; docs/scheduling.md ("The engine model") derives each figure and names its source.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from lowtide.testing import serving

T = TypeVar("T")

# The rolling window of the rpm/tpm budgets, in model seconds (hosted APIs count per minute).
BUDGET_WINDOW_S: Final = 60.0


def _opt(default: T, help_text: str) -> T:
    # The help text lives beside the field so that the CLI flags cannot drift from it.
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the simulated engine is; every field is also a CLI flag."""

    model: str = _opt("sim-model", "the served model name (/v1/models; others answer 404)")
    max_seqs: int = _opt(256, "sequences running at once, as vLLM's --max-num-seqs")
    block_size: int = _opt(16, "tokens per KV cache block, as vLLM's --block-size")
    # 53 GiB left for the KV cache / 128 KiB per token (32 layers x 8 KV heads x 128 x 2 x 2 B).
    kv_tokens: int = _opt(430_000, "KV cache capacity in tokens (running sequences + cache)")
    max_model_len: int = _opt(8192, "longest prompt + output accepted, as --max-model-len")
    # Reading 16 GB of weights once per step at ~75% of the H100's 3.35 TB/s.
    step_fixed_ms: float = _opt(6.5, "model ms of every step, whatever runs in it")
    # KV reads (~40 us per 1k tokens of context) and the token's share of the matmuls.
    step_per_seq_ms: float = _opt(0.1, "model ms a step costs per running sequence")
    # 16 GFLOP per token at ~33% of the H100's 989 dense bf16 TFLOPS.
    prefill_tokens_per_s: float = _opt(20_000.0, "uncached prompt tokens computed per model s")
    default_max_tokens: int = _opt(256, "output tokens of a request that sets no max_tokens")
    speed: float = _opt(1.0, "model seconds per real second (10: ten times faster)")
    rpm: int = _opt(0, "requests admitted per rolling model minute (0: no limit); 429 beyond")
    tpm: int = _opt(0, "tokens (prompt + max_tokens) per rolling model minute (0: no limit)")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_blocks(self) -> int:
        return self.kv_tokens // self.block_size

    def validate(self) -> None:
        positive_ints = ("max_seqs", "block_size", "kv_tokens", "max_model_len")
        for name in (*positive_ints, "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.rpm < 0 or self.tpm < 0:
            raise ValueError("rpm and tpm must not be negative (0: no limit)")
        for name in ("step_fixed_ms", "step_per_seq_ms"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        for name in ("prefill_tokens_per_s", "speed"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a finite number > 0")
        # vLLM refuses to start when one sequence of max_model_len cannot fit in the cache:
        # here too, or a request could wait forever for blocks that never come free.
        if self.max_model_len > self.num_blocks * self.block_size:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) is larger than the KV cache "
                f"({self.num_blocks} blocks of {self.block_size} tokens)"
            )
        if not self.model:
            raise ValueError("model must not be empty")

    def step_seconds(self, running: int, prefill_tokens: int) -> float:
        """Model seconds of one step with ``running`` sequences and that many prompt tokens."""
        fixed = (self.step_fixed_ms + self.step_per_seq_ms * running) / 1000.0
        return fixed + prefill_tokens / self.prefill_tokens_per_s

    def updated(self, changes: Mapping[str, object]) -> EngineConfig:
        """A copy with ``changes`` (JSON-typed values) applied; ValueError if any is bad."""
        return serving.replaced(self, changes, _COERCE, field_hints(), "unknown engine setting")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _to_float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    return float(value)


_COERCE: Final[dict[object, Callable[[object], object]]] = {
    int: serving.to_int,
    float: _to_float,
    str: serving.to_str,
}
# Command-line flags arrive as text.
FROM_TEXT: Final[dict[object, Callable[[str], object]]] = {int: int, float: float, str: str}


def field_hints() -> dict[str, object]:
    return dict(typing.get_type_hints(EngineConfig))


def require_loopback(host: str) -> None:
    serving.require_loopback(host, "the simulated engine only listens on loopback")
