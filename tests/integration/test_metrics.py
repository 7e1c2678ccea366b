"""GET /metrics after a known sequence of loads, requests, errors, an eviction and an unload, read with
prometheus_client's own parser."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import logged_server, write_torchscript

JSON = "application/json"


def samples(server) -> dict[tuple[str, tuple], float]:
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200
    assert headers.get("Content-Type", "").startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_per_model_metrics_count_what_happened(tmp_path):
    root = tmp_path / "models"
    for name in ("a", "b", "c"):
        write_torchscript(root / name)
        (root / name / "torch-mme.json").write_text(json.dumps({"memory_mb": 1000}))
    env = {"TORCH_MME_MEMORY_BUDGET_MB": "3000", "TORCH_MME_EVICTION": "lru"}
    with logged_server(root, tmp_path / "serve.log", env=env) as server:
        target = {"X-Amzn-SageMaker-Target-Model": "team/a.tar.gz", "Content-Type": "application/json"}
        body = json.dumps({"model_name": "a", "url": str(root / "a")}).encode()
        assert server.request("POST", "/models", body, target)[0] == 200
        assert server.load("b", str(root / "b"))[0] == 200
        for _ in range(3):
            assert server.invoke("a", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert server.invoke("a", b"[[1, 2", "application/json")[0] == 400
        assert server.invoke("b", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert server.invoke("never-loaded", b"[1]", "application/json")[0] == 404
        status, headers, _ = server.request("POST", "/models/a/invoke", b"[[1, 2, 3]]", {"Content-Type": JSON})
        assert status == 200 and not any(k.lower() == "x-torch-mme-timing" for k in headers)
        assert server.load("c", str(root / "c"))[0] == 200  # room for two: evicts b, the least recently used
        assert server.unload("a") == 200
        found = samples(server)
    assert value(found, "torch_mme_model_requests_total", model="a", status="200") == 4
    assert value(found, "torch_mme_model_requests_total", model="a", status="400") == 1
    assert value(found, "torch_mme_model_requests_total", model="b", status="200") == 1
    assert value(found, "torch_mme_model_requests_total", model="(not loaded)", status="404") == 1
    assert value(found, "torch_mme_model_request_seconds_count", model="a") == 5
    assert value(found, "torch_mme_model_queue_seconds_count", model="a") == 5
    assert value(found, "torch_mme_model_inference_seconds_count", model="a") == 5
    assert value(found, "torch_mme_model_batch_size_sum", model="a") == 5  # batches of one
    assert value(found, "torch_mme_model_loads_total", model="a", outcome="loaded") == 1
    assert value(found, "torch_mme_model_load_seconds_count", model="c") == 1
    assert value(found, "torch_mme_model_evictions_total", model="b") == 1
    assert value(found, "torch_mme_model_unloads_total", model="b", reason="eviction") == 1
    assert value(found, "torch_mme_model_unloads_total", model="a", reason="request") == 1
    assert value(found, "torch_mme_model_resident_bytes", model="c") > 1_000_000
    assert ("torch_mme_model_resident_bytes", (("model", "a"),)) not in found  # gone with the model
    assert value(found, "torch_mme_loaded_models") == 1
    log = (tmp_path / "serve.log").read_text()
    assert "loaded a (TargetModel team/a.tar.gz)" in log
    assert "unloaded a (TargetModel team/a.tar.gz)" in log
    # no log line per request (CloudWatch bills each): MMS's "Backend response time" and its worker's
    # "[METRICS]" lines are dropped; a worker's own lines ("Connecting to", load messages) still show
    assert "Backend response time" not in log and "[METRICS]" not in log
    assert "Connecting to" in log


def test_metrics_can_be_turned_off(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    write_torchscript(root / "m")
    with logged_server(root, tmp_path / "serve.log", env={"TORCH_MME_METRICS": "false"}) as server:
        assert server.request("GET", "/metrics")[0] == 404
        assert server.load("m", str(root / "m"))[0] == 200
        status, headers, _ = server.request("POST", "/models/m/invoke", b"[[1, 2, 3]]", {"Content-Type": JSON})
        assert status == 200 and not any(k.lower() == "x-torch-mme-timing" for k in headers)
