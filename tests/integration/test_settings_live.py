"""Server settings that only show on a running server: the timeout in seconds, workers per model."""

from __future__ import annotations

import json
import os
import time

from tests.integration.conftest import write_script_model, write_torchscript
from torch_mme.tools.local_server import LocalServer

SLOW_MODEL = """
    import time
    import torch

    def model_fn(model_dir):
        return torch.nn.Identity()

    def predict_fn(data, model):
        if float(data.flatten()[0]) > 0:
            time.sleep(30)
        return model(data)
"""


def test_timeout_is_in_seconds_and_workers_per_model_apply(tmp_path):
    write_script_model(tmp_path / "slow" / "model", SLOW_MODEL)
    write_torchscript(tmp_path / "two" / "model")
    etc_config_existed = os.path.exists("/etc/sagemaker-mms.properties")
    with LocalServer(str(tmp_path), args=["--timeout", "3", "--workers", "2"]) as server:
        assert server.load("slow", str(tmp_path / "slow" / "model"))[0] == 200
        assert server.load("two", str(tmp_path / "two" / "model"))[0] == 200
        assert len(json.loads(server.request("GET", "/models/two")[2])["workers"]) == 2

        started = time.monotonic()
        status, _, _ = server.invoke("slow", b"[1.0]", "application/json")
        elapsed = time.monotonic() - started
        assert status >= 500
        assert 2.5 < elapsed < 15, elapsed  # 3 s, not 3 minutes (MMS's own unit)

        # the worker was replaced: the model answers again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, _, body = server.invoke("slow", b"[-1.0]", "application/json")
            if status == 200:
                break
            time.sleep(0.5)
        assert status == 200 and json.loads(body) == [-1.0]
    # serve keeps its MMS config in its own run folder, not /etc
    assert os.path.exists("/etc/sagemaker-mms.properties") == etc_config_existed
