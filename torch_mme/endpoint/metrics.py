"""Metrics named like SageMaker's multi-model endpoint metrics, in Prometheus text (prometheus_client) and in the log.

ModelCacheHit (1 a hit, 0 a miss), LoadedModelCount, ModelDownloadingTime,
ModelLoadingTime, ModelUnloadingTime, ModelLoadingWaitTime (how long a
request waited for its model), plus Invocations and InvocationErrors.
Times are in microseconds, as SageMaker documents these four (the unit is in
each metric's HELP line).

The figures are kept here and handed to prometheus_client as metric families by a collector in a
private registry (as ``torch_mme.runtime.metrics`` does): a series appears once it has a value, and no
``_created`` series are written (SageMaker's metrics have none).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

log = logging.getLogger("torch_mme.endpoint.metrics")

HELP = {
    "ModelCacheHit": "1 when the target model was already loaded, 0 when it had to be loaded (per invocation)",
    "LoadedModelCount": "models loaded in the container now",
    "ModelDownloadingTime": "microseconds to download a model artifact from the store",
    "ModelLoadingTime": "microseconds for the container's LoadModel",
    "ModelUnloadingTime": "microseconds for the container's UnloadModel",
    "ModelLoadingWaitTime": "microseconds an invocation waited for its model to be downloaded and loaded",
    "Invocations": "invocations answered",
    "InvocationErrors": "invocations answered with an error, by error type",
    "ModelEvictions": "models unloaded to make room (the container answered 507)",
    "DiskCacheEvictions": "extracted artifacts deleted from disk to stay within the cache budget",
}


@dataclass
class _Summary:
    count: int = 0
    total: float = 0.0


Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._summaries: dict[str, _Summary] = defaultdict(_Summary)
        self._counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self._gauges: dict[str, float] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe(self, name: str, value: float, target: str = "") -> None:
        """A sample of a time or ratio metric (exported as _sum and _count; the target only goes to the log,
        so a thousand models do not make a thousand series)."""
        with self._lock:
            summary = self._summaries[name]
            summary.count += 1
            summary.total += value
        log.info("metric %s=%.3f target=%s", name, value, target)

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += amount

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def value(self, name: str, **labels: str) -> float:
        """A counter's value, a gauge's value, or a summary's count (for tests and the benchmark)."""
        with self._lock:
            key = (name, tuple(sorted(labels.items())))
            if key in self._counters:
                return self._counters[key]
            if name in self._gauges and not labels:
                return self._gauges[name]
            return float(self._summaries[name].count) if name in self._summaries and not labels else 0.0

    def prometheus(self) -> str:
        """Prometheus text format 0.0.4, every metric prefixed ``sagemaker_``."""
        return generate_latest(self.registry).decode()

    def collect(self) -> Iterator[Metric]:
        """The metric families, by name (the collector protocol of ``CollectorRegistry``)."""
        with self._lock:
            gauges = dict(self._gauges)
            counters = dict(self._counters)
            summaries = {name: (s.count, s.total) for name, s in self._summaries.items()}
        for name in sorted({n for n, _ in counters} | set(gauges) | set(summaries)):
            metric, doc = f"sagemaker_{name}", HELP.get(name, name)
            if name in gauges:
                yield GaugeMetricFamily(metric, doc, value=gauges[name])
            elif name in summaries:
                count, total = summaries[name]
                yield SummaryMetricFamily(metric, doc, count_value=count, sum_value=total)
            else:
                series = sorted((labels, v) for (n, labels), v in counters.items() if n == name)
                names = sorted({k for labels, _ in series for k, _ in labels})
                family = CounterMetricFamily(metric, doc, labels=names)
                for labels, v in series:
                    family.add_metric([dict(labels).get(k, "") for k in names], v)
                yield family
