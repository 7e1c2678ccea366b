"""A model's torch-mme.json through the real serve: validated before any worker starts, run by MMS as it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import logged_server, write_torchscript
from torch_mme import processes

BUDGET_MB = 3000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    log = tmp_path_factory.mktemp("logs") / "serve.log"
    with logged_server(root, log, env={"TORCH_MME_MEMORY_BUDGET_MB": str(BUDGET_MB)}) as server:
        yield server, root


def model(root: Path, name: str, config: dict | str) -> str:
    write_torchscript(root / name)
    (root / name / "torch-mme.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return str(root / name)


def registered(server) -> list[str]:
    return sorted(m["modelName"] for m in json.loads(server.request("GET", "/models")[2])["models"])


@pytest.mark.parametrize(
    "config, named",
    [
        ({"batch_sise": 4}, "batch_sise"),
        ({"workers": 0}, "workers"),
        ({"batch_size": "8"}, "batch_size"),
        ({"warmup": [{"file": "../../../etc/passwd"}]}, "warmup[0]"),
        ("{broken", "not valid JSON"),
    ],
)
def test_a_bad_config_is_400_naming_the_key_before_any_worker_starts(served, config, named):
    server, root = served
    status, answer = server.load("bad", model(root, "bad", config))
    assert status == 400, answer
    assert answer["type"] == "InvalidModelConfig" and named in answer["message"]
    assert "bad" not in registered(server)
    assert processes.model_processes(server.process.pid, "bad") == []  # no worker was ever started


def test_workers_and_batching_reach_mms_and_every_worker_is_counted(served):
    server, root = served
    status, _ = server.load("single", model(root, "single", {}))
    assert status == 200
    status, _ = server.load("pair", model(root, "pair", {"workers": 2, "batchSize": 4, "max_batch_delay_ms": 30}))
    assert status == 200
    single = json.loads(server.request("GET", "/models/single")[2])
    pair = json.loads(server.request("GET", "/models/pair")[2])
    assert (pair["minWorkers"], pair["batchSize"], pair["maxBatchDelay"]) == (2, 4, 30)
    assert len(pair["workers"]) == 2 and len(single["workers"]) == 1
    assert pair["memory"]["estimatedBytes"] == 2 * single["memory"]["estimatedBytes"]
    assert server.invoke("pair", b"[[1, 2, 3]]", "application/json")[0] == 200
    assert server.unload("single") == 200 and server.unload("pair") == 200


def test_admission_refuses_a_model_whose_workers_together_do_not_fit(served):
    server, root = served
    status, answer = server.load("fits", model(root, "fits", {"memory_mb": 1200}))
    assert status == 200, answer
    assert server.unload("fits") == 200
    status, answer = server.load("twice", model(root, "twice", {"memory_mb": 1200, "workers": 2}))
    assert status == 507, answer
    assert "needs about 2400 MB" in answer["message"]
    assert "twice" not in registered(server)
