"""The front's per-model invocation series are plain numbers turned into metric families when scraped:
what a scrape reads must be what prometheus_client's own Counter and Histogram would have written."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from torch_mme.runtime.metrics import BATCHES, SECONDS, ModelMetrics


def scrape(text: bytes, prefix: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


def test_the_invocation_series_read_as_prometheus_clients_own_would():
    values = [0.0, 0.0005, 0.0007, 0.001, 0.003, 0.5, 1.0, 59.0, 60.0, 61.0, 1000.0]
    batches = [1, 1, 2, 3, 16, 17, 256, 300]
    ours = ModelMetrics()
    reference = CollectorRegistry()
    requests = Counter("torch_mme_model_requests", "x", ["model", "status"], registry=reference)
    latency = Histogram("torch_mme_model_request_seconds", "x", ["model"], buckets=SECONDS, registry=reference)
    batch = Histogram("torch_mme_model_batch_size", "x", ["model"], buckets=BATCHES, registry=reference)
    for i, value in enumerate(values):
        model = "a" if i % 4 else "b"
        latency.labels(model), batch.labels(model)  # a model's series exist from its first invocation
        status = 200 if i % 3 else 400
        timing = f"batch={batches[i % len(batches)]}" if i % 2 else None
        ours.invoked("a" if i % 4 else "b", status, value, timing, 0.0)
        requests.labels("a" if i % 4 else "b", str(status)).inc()
        latency.labels("a" if i % 4 else "b").observe(value)
        if timing:
            batch.labels("a" if i % 4 else "b").observe(batches[i % len(batches)])
    for prefix in ("torch_mme_model_requests", "torch_mme_model_request_seconds", "torch_mme_model_batch_size"):
        assert scrape(ours.text(), prefix) == scrape(generate_latest(reference), prefix), prefix


def created(text: bytes) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith("torch_mme_model_") and s.name.endswith("_created")
    }


def test_each_invocation_series_says_when_it_was_created_as_prometheus_clients_own_do():
    """A scraper computing rates from ``_created`` (OpenMetrics' start time) finds one per series, at its first
    use: a model's histograms at its first invocation, a status's counter at its first answer."""
    started = time.time()
    ours, reference = ModelMetrics(), CollectorRegistry()
    requests = Counter("torch_mme_model_requests", "x", ["model", "status"], registry=reference)
    histograms = [
        Histogram(name, "x", ["model"], buckets=SECONDS, registry=reference)
        for name in (
            "torch_mme_model_request_seconds",
            "torch_mme_model_queue_seconds",
            "torch_mme_model_inference_seconds",
        )
    ]
    histograms.append(Histogram("torch_mme_model_batch_size", "x", ["model"], buckets=BATCHES, registry=reference))
    ours.invoked("a", 200, 0.01, None, 0.0)
    time.sleep(0.05)
    between = time.time()
    ours.invoked("a", 503, 0.01, None, 0.0)
    ours.invoked("b", 200, 0.01, None, 0.0)
    for model, status in (("a", 200), ("a", 503), ("b", 200)):
        requests.labels(model, str(status)).inc()
        for histogram in histograms:
            histogram.labels(model)
    ours_created, reference_created = created(ours.text()), created(generate_latest(reference))
    assert set(ours_created) == set(reference_created)
    assert started <= ours_created[("torch_mme_model_requests_created", (("model", "a"), ("status", "200")))] < between
    assert between <= ours_created[("torch_mme_model_requests_created", (("model", "a"), ("status", "503")))]
    assert started <= ours_created[("torch_mme_model_request_seconds_created", (("model", "a"),))] < between
    assert between <= ours_created[("torch_mme_model_batch_size_created", (("model", "b"),))] <= time.time()
