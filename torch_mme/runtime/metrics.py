"""Per-model metrics of the container, as Prometheus text at ``GET /metrics`` (prometheus_client).

SageMaker's own multi-model metrics are per endpoint; here every series has
the model's name as its ``model`` label: invocations by status, latency end
to end in the container, time queued in MMS before the handler, time in the
model, batch sizes, loads and their time, unloads by reason, evictions, and
resident memory. The handler reports its part of each request in one
response header (``handler.timing``), which the front reads and removes.

Series of a model stay after it is unloaded (counters keep their history),
except its resident memory, which is removed. ``TORCH_MME_METRICS=false``
turns all of it off (``/metrics`` then answers 404).
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from handler.timing import parse_timing

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Histogram:
    """One model's histogram as plain numbers: a bucket index and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if value != value:  # NaN (a timing header can say anything): dropped (prometheus_client: no bucket, sum NaN)
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bucket whose bound >= value
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets


class _Series:
    """One model's invocation series, and when each was created (``_created`` samples, as prometheus_client's)."""

    __slots__ = ("requests", "requests_created", "created", "latency", "queued", "inference", "batch")

    def __init__(self) -> None:
        self.created = time.time()
        self.requests: dict[int, int] = {}
        self.requests_created: dict[int, float] = {}
        self.latency = _Histogram(SECONDS)
        self.queued = _Histogram(SECONDS)
        self.inference = _Histogram(SECONDS)
        self.batch = _Histogram(BATCHES)


_HISTOGRAMS = (
    (
        "latency",
        "torch_mme_model_request_seconds",
        "Invocation latency in the container, from the front to MMS and back",
    ),
    (
        "queued",
        "torch_mme_model_queue_seconds",
        "Time from the front sending an invocation to the handler receiving it (MMS's queue and batching)",
    ),
    (
        "inference",
        "torch_mme_model_inference_seconds",
        "Time the handler spent on the batch the invocation was in (decode, predict, encode)",
    ),
    ("batch", "torch_mme_model_batch_size", "Requests in the batch an invocation ran in"),
)


class _Invocations:
    """The per-invocation series, kept as plain numbers and turned into metric families only when scraped.

    prometheus_client's ``Counter``/``Histogram`` take a lock and several calls for every increment: with
    five series per invocation that was the largest part of the front's own work per request. The front's
    event loop is the only writer, and ``/metrics`` is answered on that loop too, so no lock is needed.
    """

    def __init__(self) -> None:
        self.series: dict[str, _Series] = {}

    def collect(self) -> Iterator[Metric]:
        # prometheus_client's own series write ``_created`` unless PROMETHEUS_DISABLE_CREATED_SERIES (its flag)
        created = getattr(_prometheus_metrics, "_use_created", True)
        requests = CounterMetricFamily(
            "torch_mme_model_requests", "Invocations answered, by model and status", labels=["model", "status"]
        )
        for model, series in self.series.items():
            for status, count in series.requests.items():
                requests.add_metric(
                    [model, str(status)], count, created=series.requests_created[status] if created else None
                )
        yield requests
        for attribute, name, documentation in _HISTOGRAMS:
            family = HistogramMetricFamily(name, documentation, labels=["model"])
            for model, series in self.series.items():
                histogram = getattr(series, attribute)
                family.add_metric([model], histogram.cumulative(), histogram.sum)
                if created:
                    family.samples.append(Sample(name + "_created", {"model": model}, series.created))
            yield family


class ModelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._invocations = _Invocations()
        r.register(self._invocations)
        self.loads = Counter("torch_mme_model_loads", "LoadModel calls, by outcome", ["model", "outcome"], registry=r)
        self.load_seconds = Histogram(
            "torch_mme_model_load_seconds", "LoadModel time of successful loads", ["model"], buckets=SECONDS, registry=r
        )
        self.unloads = Counter("torch_mme_model_unloads", "Unloads, by reason", ["model", "reason"], registry=r)
        self.evictions = Counter(
            "torch_mme_model_evictions", "Unloads to make room for another model", ["model"], registry=r
        )
        self.resident = Gauge(
            "torch_mme_model_resident_bytes", "USS of the model's processes, measured at load", ["model"], registry=r
        )
        self.loaded = Gauge("torch_mme_loaded_models", "Models loaded now", registry=r)

    def invoked(self, model: str, status: int, seconds: float, timing: str | None, sent_at: float) -> None:
        series = self._invocations.series.get(model)
        if series is None:
            series = self._invocations.series[model] = _Series()
        count = series.requests.get(status)
        if count is None:  # this status's first answer: its counter is created now
            count, series.requests_created[status] = 0, time.time()
        series.requests[status] = count + 1
        series.latency.observe(seconds)
        if not timing:
            return
        parts = parse_timing(timing)
        if "received" in parts:
            series.queued.observe(max(0.0, parts["received"] - sent_at))
        if "inference" in parts:
            series.inference.observe(parts["inference"])
        if "batch" in parts:
            series.batch.observe(parts["batch"])

    def load_finished(self, model: str, status: int, seconds: float, resident_bytes: int, loaded: int) -> None:
        self.loads.labels(model, "loaded" if status == 200 else str(status)).inc()
        if status == 200:
            self.load_seconds.labels(model).observe(seconds)
            self.resident.labels(model).set(resident_bytes)
        self.loaded.set(loaded)

    def unloaded(self, model: str, reason: str, loaded: int) -> None:
        self.unloads.labels(model, reason).inc()
        if reason == "eviction":
            self.evictions.labels(model).inc()
        with contextlib.suppress(KeyError):  # never loaded, or already removed
            self.resident.remove(model)
        self.loaded.set(loaded)

    def text(self) -> bytes:
        return generate_latest(self.registry)
