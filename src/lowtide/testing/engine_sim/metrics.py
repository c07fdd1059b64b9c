"""``GET /metrics``: the engine's state in Prometheus text, under vLLM's metric names.

Gauges: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc`` (0-1: the share of KV blocks held by running sequences).
Counters (``_total``): ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` (tokens),
``vllm:num_preemptions``, ``vllm:prompt_tokens``, ``vllm:generation_tokens``,
``vllm:request_success``. Every sample carries a ``model_name`` label, as vLLM's do.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lowtide.testing.engine_sim.core import EngineCore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, core: EngineCore, model: str) -> None:
        self._core = core
        self._model = model

    def collect(self) -> Iterable[Metric]:
        core, labels = self._core, [self._model]
        c = core.counters
        gauges = (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             len(core.running)),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
             len(core.waiting)),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
             core.pool.usage()),
        )  # fmt: skip
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(labels, value)
            yield gauge
        counters = (
            ("vllm:prefix_cache_queries",
             "Prefix cache queries, in terms of number of queried tokens.", c.prefix_queries),
            ("vllm:prefix_cache_hits",
             "Prefix cache hits, in terms of number of cached tokens.", c.prefix_hits),
            ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
             c.preemptions),
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", c.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             c.generation_tokens),
            ("vllm:request_success", "Count of successfully processed requests.", c.finished),
        )  # fmt: skip
        for name, doc, count in counters:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(labels, count)
            yield counter


def render(core: EngineCore, model: str) -> bytes:
    """The Prometheus text exposition of ``core``'s state now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(core, model))
    return generate_latest(registry)
