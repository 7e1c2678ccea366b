"""A model's torch-mme.json through the real serve: validated before any worker starts, run by MMS as it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.answers import assert_same_answers
from tests.integration.conftest import logged_server, write_torchscript
from torch_mme.runtime import processes

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


RECORDING = """
import os
import torch

class Recording(torch.nn.Module):
    def __init__(self, log):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 2)
        self.log = log

    def forward(self, x):
        with open(self.log, "a") as f:
            f.write(f"{x.shape[0]}\\n")
        return self.linear(x)

def model_fn(model_dir):
    return Recording(os.path.join(model_dir, "forward.log"))
"""


def test_concurrent_requests_are_stacked_by_mms_batching_and_answered_as_alone(served):
    import concurrent.futures

    server, root = served
    for name, batch in (("stacked", 8), ("one-by-one", 1)):
        (root / name / "code").mkdir(parents=True)
        (root / name / "code" / "inference.py").write_text(RECORDING)
        (root / name / "torch-mme.json").write_text(json.dumps({"batch_size": batch, "max_batch_delay_ms": 200}))
        assert server.load(name, str(root / name))[0] == 200
    bodies = [json.dumps([[i, i + 1, i + 2]] * (1 + i % 3)).encode() for i in range(16)]
    accepts = ["application/json", "text/csv"] * 8

    def call(name: str, i: int):
        return server.invoke(name, bodies[i], "application/json", accepts[i])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        stacked = list(pool.map(lambda i: call("stacked", i), range(16)))
    alone = [call("one-by-one", i) for i in range(16)]
    assert_same_answers(stacked, alone)
    passes = [int(n) for n in (root / "stacked" / "forward.log").read_text().split()]
    assert sum(passes) == sum(1 + i % 3 for i in range(16))
    assert len(passes) < 16, passes  # several requests went through one forward pass
    assert server.unload("stacked") == 200 and server.unload("one-by-one") == 200
