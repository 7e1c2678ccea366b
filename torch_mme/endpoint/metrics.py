"""Metrics named like SageMaker's multi-model endpoint metrics, in Prometheus text and in the log.

ModelCacheHit (1 a hit, 0 a miss), LoadedModelCount, ModelDownloadingTime,
ModelLoadingTime, ModelUnloadingTime, ModelLoadingWaitTime (how long a
request waited for its model), plus Invocations and InvocationErrors.
Times are in microseconds, as SageMaker documents these four (the unit is in
each metric's HELP line).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

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


class Metrics:
    def __init__(self) -> None:
        self._summaries: dict[tuple[str, str], _Summary] = defaultdict(_Summary)
        self._counters: dict[tuple[str, str], float] = defaultdict(float)
        self._gauges: dict[str, float] = {}

    def observe(self, name: str, value: float, target: str = "") -> None:
        """A sample of a time or ratio metric (exported as _sum and _count; the target only goes to the log,
        so a thousand models do not make a thousand series)."""
        summary = self._summaries[(name, "")]
        summary.count += 1
        summary.total += value
        log.info("metric %s=%.3f target=%s", name, value, target)

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counters[(name, _labels(labels))] += amount

    def gauge(self, name: str, value: float) -> None:
        self._gauges[name] = value

    def value(self, name: str, **labels: str) -> float:
        """A counter's value, a gauge's value, or a summary's count (for tests and the benchmark)."""
        key = (name, _labels(labels))
        if key in self._counters:
            return self._counters[key]
        if name in self._gauges and not labels:
            return self._gauges[name]
        return float(self._summaries[key].count) if key in self._summaries else 0.0

    def prometheus(self) -> str:
        lines: list[str] = []
        names = sorted({n for n, _ in self._summaries} | {n for n, _ in self._counters} | set(self._gauges))
        for name in names:
            metric = f"sagemaker_{name}"
            lines.append(f"# HELP {metric} {HELP.get(name, name)}")
            if name in self._gauges:
                lines += [f"# TYPE {metric} gauge", f"{metric} {self._gauges[name]:g}"]
                continue
            if any(n == name for n, _ in self._counters):
                lines.append(f"# TYPE {metric} counter")
                lines += [f"{metric}_total{lb} {v:g}" for (n, lb), v in sorted(self._counters.items()) if n == name]
                continue
            lines.append(f"# TYPE {metric} summary")
            for (n, lb), summary in sorted(self._summaries.items()):
                if n == name:
                    lines += [f"{metric}_sum{lb} {summary.total:g}", f"{metric}_count{lb} {summary.count}"]
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
