"""A request alone for its model is not held for ``max_batch_delay_ms`` (the front's ``X-Torch-Mme-Alone`` and
torch_mme/runtime/java/Model.java), while requests that are in flight together are still batched together."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import logged_server, write_script_model

DELAY_MS = 2000
MODEL = """
import json
import time

import torch

FORWARDS, SAW_HINT = {forwards!r}, {saw_hint!r}


class Recording(torch.nn.Module):
    def forward(self, x):
        with open(FORWARDS, "a") as f:
            f.write(f"{{x.shape[0]}}\\n")
        time.sleep(0.3)  # holds the worker: requests sent meanwhile queue in MMS behind this one
        return x * 2


def model_fn(model_dir):
    return Recording()


def input_fn(body, content_type, context):
    names = list(context.get_all_request_header(context.request_id)) + [context.request_header("X-Torch-Mme-Alone")]
    if any(str(name).lower() == "x-torch-mme-alone" or name == "1" for name in names):
        with open(SAW_HINT, "a") as f:
            f.write("seen\\n")
    return torch.tensor(json.loads(body), dtype=torch.float32)
"""


def _forwards(path: Path) -> list[int]:
    return [int(n) for n in path.read_text().split()] if path.exists() else []


def _batch_sizes(server, model: str) -> tuple[float, float]:
    """The front's batch-size histogram for ``model``: (requests counted, their batch sizes summed)."""
    status, _, text = server.request("GET", "/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name.startswith("torch_mme_model_batch_size_"):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found.get("count", 0.0), found.get("sum", 0.0)


def test_a_lone_request_skips_the_batch_delay_and_concurrent_ones_are_batched(tmp_path):
    root, logs = tmp_path / "models", tmp_path / "logs"
    logs.mkdir()
    forwards, saw_hint = logs / "forwards", logs / "saw-hint"
    write_script_model(root / "held", MODEL.format(forwards=str(forwards), saw_hint=str(saw_hint)))
    (root / "held" / "torch-mme.json").write_text(json.dumps({"batch_size": 16, "max_batch_delay_ms": DELAY_MS}))
    with logged_server(root, logs / "serve.log") as server:
        assert server.load("held", str(root / "held"))[0] == 200

        def call(row: int) -> tuple[int, bytes, float]:
            started = time.perf_counter()
            status, _, body = server.invoke("held", json.dumps([[row, row + 1]]).encode(), "application/json")
            return status, body, time.perf_counter() - started

        status, body, elapsed = call(1)
        assert (status, json.loads(body)) == (200, [[2.0, 4.0]])
        assert elapsed < 0.75 * DELAY_MS / 1e3, elapsed  # answered before the batch delay could have elapsed
        assert _forwards(forwards) == [1]

        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            first = pool.submit(call, 10)
            deadline = time.monotonic() + 30
            while _forwards(forwards) != [1, 1] and time.monotonic() < deadline:  # the first is in its forward
                time.sleep(0.01)
            rest = [pool.submit(call, 20 + i) for i in range(4)]  # in flight together: not alone
            answers = [first.result(timeout=60)] + [f.result(timeout=60) for f in rest]
        assert [a[0] for a in answers] == [200] * 5
        assert [json.loads(a[1]) for a in answers[1:]] == [[[2.0 * r, 2.0 * r + 2]] for r in range(20, 24)]
        assert answers[0][2] < 0.75 * DELAY_MS / 1e3, answers[0][2]  # alone when it was sent
        assert _forwards(forwards) == [1, 1, 4], _forwards(forwards)  # the four queued behind it: one batch
        assert _batch_sizes(server, "held") == (6, 1 + 1 + 4 * 4)
        assert not saw_hint.exists()  # the model's code never sees the front's header
        assert server.unload("held") == 200
