"""Real batching: items that fit together run in one forward pass, each answered as if it ran alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.answers import assert_same_answers
from tests.unit.conftest import CSV, JSON, NPY, npy_bytes
from torch_mme.errors import ModelLoadError

COUNTING = """
    import torch

    class Counting(torch.nn.Module):
        def __init__(self, rowwise=True):
            super().__init__()
            torch.manual_seed(0)
            self.linear = torch.nn.Linear(3, 2)
            self.rowwise = rowwise
            self.calls = []

        def forward(self, x):
            self.calls.append(tuple(x.shape))
            out = self.linear(x)
            return out if self.rowwise else out.sum(dim=0)

    def model_fn(model_dir):
        return Counting(rowwise={rowwise})
"""
USER_PREDICT = """
    seen = []

    def predict_fn(data, model):
        seen.append(tuple(data.shape))
        with torch.no_grad():
            return model(data)
"""


def counting(models, name: str, config: dict, rowwise: bool = True, extra: str = ""):
    code = COUNTING.replace("{rowwise}", str(rowwise)) + extra
    return models.dir(name, {"code/inference.py": code, "torch-mme.json": json.dumps(config)})


MIXED = [
    (b"[[1, 2, 3]]", JSON, JSON),
    (b"[[4, 5, 6], [7, 8, 9]]", JSON, CSV),
    (b"[[1, 2]]", JSON, JSON),  # wrong width: 400 for this item only
    (b"[[1, 2", JSON, JSON),  # malformed: 400 at decode
    (npy_bytes(np.ones((3, 3), dtype=np.float32)), NPY, NPY),
    (b"1,1,1\n2,2,2\n", CSV, JSON),
    (b"[[0, 0, 0]]", JSON, "image/png"),  # 415 at encode, after the stacked pass
]


def test_a_mixed_batch_is_answered_item_by_item_as_without_batching(models, serve):
    batched = serve(counting(models, "batched", {"batch_size": 8}))
    alone = serve(counting(models, "alone", {"batch_size": 1}))
    assert_same_answers(batched.send(MIXED), [alone.one(*item) for item in MIXED])
    # the five float32 inputs of width 3 (1 + 2 + 3 + 2 + 1 rows) ran once; the width-2 item alone
    assert sorted(batched.handler.model.module.calls) == [(1, 2), (9, 3)]


def test_an_output_not_split_by_rows_runs_item_by_item_and_stops_stacking(models, serve):
    served = serve(counting(models, "reducing", {"batch_size": 8}, rowwise=False))
    alone = serve(counting(models, "reducing-alone", {"batch_size": 1}, rowwise=False))
    items = [(b"[[1, 2, 3]]", JSON, JSON), (b"[[4, 5, 6], [7, 8, 9]]", JSON, JSON)]
    assert_same_answers(served.send(items), [alone.one(*item) for item in items])
    assert served.handler.stacking is False
    assert_same_answers(served.send(items), [alone.one(*item) for item in items])
    assert served.handler.model.module.calls == [(3, 3), (1, 3), (2, 3), (1, 3), (2, 3)]


def test_a_failing_stacked_pass_lets_each_item_fail_on_its_own(models, serve, codec_helpers):
    picky = """
    def predict_fn(data, model):
        if bool((data < 0).any()):
            raise ZeroDivisionError("negative")
        return model(data)
    """
    served = serve(counting(models, "picky", {"batch_size": 4, "batch_predict_fn": True}, extra=picky))
    results = served.send([(b"[[1, 2, 3]]", JSON, JSON), (b"[[-1, 2, 3]]", JSON, JSON), (b"[[3, 2, 1]]", JSON, JSON)])
    assert [status for status, _, _ in results] == [200, 500, 200]
    codec_helpers.error(results[1][2], 500, "PredictionError")


@pytest.mark.parametrize("opted_in, shapes", [(False, [(1, 3), (2, 3)]), (True, [(3, 3)])])
def test_a_users_predict_fn_gets_the_stacked_batch_only_when_the_model_opts_in(models, serve, opted_in, shapes):
    config = {"batch_size": 4, "batch_predict_fn": opted_in}
    served = serve(counting(models, f"user-{opted_in}", config, extra=USER_PREDICT))
    items = [(b"[[1, 2, 3]]", JSON, JSON), (b"[[4, 5, 6], [7, 8, 9]]", JSON, JSON)]
    assert [status for status, _, _ in served.send(items)] == [200, 200]
    assert served.handler.model.hooks["predict_fn"].fn.__globals__["seen"] == shapes


def test_warmup_requests_run_at_load_and_a_failing_one_fails_the_load(models, serve):
    config = {"warmup": [{"body": [[1, 2, 3]]}, {"body": "1,2,3", "content_type": "text/csv", "accept": "text/csv"}]}
    served = serve(counting(models, "warm", config))
    assert served.handler.model.module.calls == [(1, 3), (1, 3)]
    with pytest.raises(ModelLoadError, match=r"warmup\[0\] failed \(400\)"):
        serve(counting(models, "cold", {"warmup": [{"body": [[1, 2]]}]}))


def test_torch_threads_is_set_in_the_worker(models, serve):
    before = torch.get_num_threads()
    try:
        serve(counting(models, "threads", {"torch_threads": 1}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
