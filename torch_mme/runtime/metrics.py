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

import contextlib
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from handler.timing import parse_timing

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class _Series:
    """One model's invocation series, looked up once."""

    requests: dict[int, Any]
    latency: Any
    queued: Any
    inference: Any
    batch: Any


class ModelMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "torch_mme_model_requests", "Invocations answered, by model and status", ["model", "status"], registry=r
        )
        self.latency = Histogram(
            "torch_mme_model_request_seconds",
            "Invocation latency in the container, from the front to MMS and back",
            ["model"],
            buckets=SECONDS,
            registry=r,
        )
        self.queued = Histogram(
            "torch_mme_model_queue_seconds",
            "Time from the front sending an invocation to the handler receiving it (MMS's queue and batching)",
            ["model"],
            buckets=SECONDS,
            registry=r,
        )
        self.inference = Histogram(
            "torch_mme_model_inference_seconds",
            "Time the handler spent on the batch the invocation was in (decode, predict, encode)",
            ["model"],
            buckets=SECONDS,
            registry=r,
        )
        self.batch = Histogram(
            "torch_mme_model_batch_size",
            "Requests in the batch an invocation ran in",
            ["model"],
            buckets=BATCHES,
            registry=r,
        )
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
        self._series: dict[str, _Series] = {}

    def invoked(self, model: str, status: int, seconds: float, timing: str | None, sent_at: float) -> None:
        series = self._series.get(model)
        if series is None:  # a label lookup costs more than the observation: once per model
            series = self._series[model] = _Series(
                {},
                self.latency.labels(model),
                self.queued.labels(model),
                self.inference.labels(model),
                self.batch.labels(model),
            )
        counter = series.requests.get(status)
        if counter is None:
            counter = series.requests[status] = self.requests.labels(model, str(status))
        counter.inc()
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
