"""A simulated continuous-batching inference engine that answers like vLLM's OpenAI server.

It exists to measure lowtide's scheduling (prefix-grouped sending, adaptive concurrency, rpm
and tpm pacing) against baselines, without a GPU: at most ``max_seqs`` requests run at once and
the rest wait first come first served; prompts share KV blocks through an automatic prefix cache
of fixed capacity with LRU eviction; every step costs a fixed part, a part per running sequence
and the uncached prompt tokens it computes; and optional rpm/tpm budgets answer 429 beyond them.
docs/scheduling.md ("The engine model") describes the model and where its defaults come from.

In-process::

    async with SimEngine(EngineConfig(max_seqs=32, speed=10)) as eng:
        ...  # point an OpenAI client at eng.base_url; eng.stats() for what happened

As a process (prints one ``LISTENING http://127.0.0.1:<port>`` line, then nothing)::

    python -m lowtide.testing.engine_sim --port 0 --max-seqs 32 --speed 10

or ``with SimEngineProcess(config) as eng: eng.url``.

The modules: ``config`` (the parameters), ``tokens`` (the tokenizer stand-in and block keys),
``blocks`` (the KV block pool and prefix cache), ``core`` (the pure stepping logic), ``limits``
(rpm/tpm budgets), ``wire`` (request and answer bodies), ``metrics`` (``/metrics``), ``stats``
(``/_sim/stats``), ``server`` (the asyncio shell), ``process`` and ``cli`` (the process).
"""

from __future__ import annotations

from lowtide.testing.engine_sim.config import EngineConfig
from lowtide.testing.engine_sim.core import EngineCore, Seq, StepResult
from lowtide.testing.engine_sim.process import SimEngineProcess
from lowtide.testing.engine_sim.server import TAG_HEADER, SimEngine

__all__ = [
    "TAG_HEADER",
    "EngineConfig",
    "EngineCore",
    "Seq",
    "SimEngine",
    "SimEngineProcess",
    "StepResult",
]
