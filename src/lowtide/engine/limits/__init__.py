"""How many requests a backend gets at once: a fixed ceiling, or a limit that follows the
backend's knee (``concurrency = "adaptive"``). Pure classes: they read no clock of their own
(``clock`` is injected) and do no I/O, so the tests drive them with a fake clock.

An inference engine runs at most so many sequences at once (vLLM's ``--max-num-seqs``, or fewer
when the KV cache is full). Past that, more requests in flight only wait in its queue: the
engine's throughput does not grow, and every other user of the engine waits behind them. The
adaptive limit finds that point and stays there, two ways:

- ``EngineLoadLimit``, from the engine's own metrics (vLLM's or SGLang's ``/metrics``): the
  engine's capacity is the most sequences seen running while requests were waiting; lowtide's
  share is that capacity, less ``reserve`` slots kept free for traffic that is not lowtide's, less
  what that other traffic runs or queues now (running + waiting - lowtide's own in flight).
- ``LatencyLimit``, from latency alone (hosted APIs, engines without metrics, a scrape that
  fails): below the knee, more requests in flight make each token a little slower (a bigger
  batch per step); past it, the time per token grows as fast as the requests in flight do (they
  queue). The limit climbs while the time per token grows clearly slower than the limit
  (elasticity ``e = dln(latency) / dln(in flight)`` under ``theta``), then probes a step up and a
  step down around where it stopped, keeping a step only when its elasticity says so.

``AdaptiveLimit`` uses the first while the engine's metrics are fresh and the second otherwise,
and cuts the limit in half on a 429 or 503 (once per round trip), growing back from there.
"""

from lowtide.engine.limits.adaptive import AdaptiveLimit
from lowtide.engine.limits.base import (
    CUT,
    INITIAL,
    Clock,
    EngineLoad,
    FixedLimit,
    Limiter,
    Source,
    Ticket,
)
from lowtide.engine.limits.gauge import EngineLoadLimit
from lowtide.engine.limits.latency import LatencyLimit

__all__ = [
    "CUT",
    "INITIAL",
    "AdaptiveLimit",
    "Clock",
    "EngineLoad",
    "EngineLoadLimit",
    "FixedLimit",
    "LatencyLimit",
    "Limiter",
    "Source",
    "Ticket",
]
