"""The default path's first-call warm-up: a TorchScript CPU model runs zeros shaped as it records its input at
load, so TorchScript's profiling and compiling runs happen in LoadModel, not in the first request."""

from __future__ import annotations

import json
import logging
import pickle
import textwrap
import warnings
import zipfile

import numpy as np
import pytest
import torch

from handler import model as model_module
from handler import model_config
from handler.model import Model, input_spec, sample_input
from handler.service import FIRST_CALL_RUNS
from tests.unit.conftest import make_linear
from torch_mme.errors import InvalidModelConfig

X = [[1.0, 2.0, 3.0]]


def has_optimized_plan(module: torch.jit.ScriptModule) -> bool:
    """The profiling executor has profiled ``forward`` and compiled its optimized graph (its debug state
    exists only then)."""
    try:
        module._c.get_debug_state()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def predicts(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every input ``Model.predict`` receives (the warm-up's and the requests')."""
    seen = []
    original = Model.predict

    def spy(self, data, context=None):
        seen.append(data)
        return original(self, data, context)

    monkeypatch.setattr(Model, "predict", spy)
    return seen


def trace(module, *example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace's own
        return torch.jit.trace(module.eval(), example)


def traced(models, name, module, *example):
    path = models.dir(name)
    trace(module, *example).save(str(path / "model.pt"))
    return path


def answer(served):
    status, content_type, body = served.one(json.dumps(X).encode())
    assert (status, content_type) == (200, "application/json"), body
    return np.array(json.loads(body), dtype=np.float32)


def test_a_scripted_linear_is_profiled_and_compiled_at_load(models, serve, predicts, expected):
    served = serve(models.torchscript())
    module = served.handler.model.module
    assert has_optimized_plan(module)  # without the warm-up, only the second request would compile it
    assert len(predicts) == FIRST_CALL_RUNS
    assert all(tuple(x.shape) == (1, 3) and x.dtype == torch.float32 for x in predicts)
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)  # a real request answers as before


def test_a_traced_model_runs_the_shape_and_dtype_its_archive_records(models, serve, predicts, expected):
    served = serve(traced(models, "tr", make_linear(), torch.rand(5, 3)))
    assert has_optimized_plan(served.handler.model.module)
    assert [tuple(x.shape) for x in predicts] == [(5, 3)] * FIRST_CALL_RUNS
    assert not any(x.any() for x in predicts)  # zeros, not the example's values
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)


class TwoInputs(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * 2 + b.float()


def test_a_traced_model_of_two_inputs_gets_both_with_their_dtypes(models, serve, predicts):
    path = traced(models, "two", TwoInputs(), torch.rand(2, 3), torch.ones(2, 3, dtype=torch.long))
    served = serve(path)
    assert served.handler.model.input_spec == (((2, 3), torch.float32), ((2, 3), torch.int64))
    assert [(tuple(t.shape), t.dtype) for t in sample_input(served.handler.model)] == [
        ((2, 3), torch.float32),
        ((2, 3), torch.int64),
    ]
    assert len(predicts) == FIRST_CALL_RUNS and set(predicts[0]) == {"0", "1"}  # positional, in order
    assert has_optimized_plan(served.handler.model.module)


def test_the_first_linear_is_found_through_submodules(models, serve):
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(7, 4), torch.nn.ReLU()), torch.nn.Linear(4, 2))
    served = serve(models.torchscript("nested", net))
    assert served.handler.model.input_spec == (((1, 7), torch.float32),)


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.Conv2d(3, 4, 3),  # the input's spatial size is not recorded anywhere
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(3, 2)),  # the input's first use is not a Linear
    ],
    ids=["conv", "relu-first"],
)
def test_a_scripted_model_whose_input_is_not_known_is_not_run(models, serve, predicts, module):
    served = serve(models.torchscript("unknown", module))
    assert served.handler.model.input_spec is None
    assert predicts == []
    assert not has_optimized_plan(served.handler.model.module)


def test_an_eager_module_is_not_run(models, serve, predicts):
    served = serve(models.state_dict())
    assert served.handler.model.input_spec is None and input_spec(served.handler.model.module) is None
    assert predicts == []


def test_auto_warmup_false_turns_it_off(models, serve, predicts):
    path = models.torchscript()
    (path / model_config.FILE).write_text('{"auto_warmup": false}')
    served = serve(path)
    assert predicts == []
    assert not has_optimized_plan(served.handler.model.module)


def test_the_configs_warmup_requests_replace_it(models, serve, predicts):
    path = models.torchscript()
    (path / model_config.FILE).write_text(json.dumps({"warmup": [{"body": X}]}))
    serve(path)
    assert len(predicts) == 1 and predicts[0].tolist() == X  # the user's request, nothing synthesized


SCRIPTED_BY_MODEL_FN = """
    import os

    import torch


    def model_fn(model_dir):
        return torch.jit.load(os.path.join(model_dir, "model.pt"))
"""


@pytest.mark.parametrize(
    ("hook", "runs"),
    [
        ("", FIRST_CALL_RUNS),  # model_fn returning a scripted module: the graph says the input
        ("def model_warmup_fn(model_dir, model):\n    pass\n", 0),
        ("def predict_fn(data, model):\n    return model(data)\n", 0),
    ],
    ids=["model_fn", "model_warmup_fn", "predict_fn"],
)
def test_users_hooks(models, serve, predicts, hook, runs):
    path = models.dir("hooked", {"code/inference.py": textwrap.dedent(SCRIPTED_BY_MODEL_FN) + "\n\n" + hook})
    torch.jit.script(make_linear()).save(str(path / "model.pt"))
    served = serve(path)
    assert len([x for x in predicts if isinstance(x, torch.Tensor) and not x.any()]) == runs
    assert has_optimized_plan(served.handler.model.module) == bool(runs)


class RefusesZeros(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if bool((x == 0).all()):
            raise ValueError("no zeros, please")
        return y


def test_a_forward_that_fails_on_zeros_does_not_fail_the_load(models, serve, caplog):
    with caplog.at_level(logging.DEBUG, logger="handler.service"):
        served = serve(models.torchscript("picky", RefusesZeros()))
    assert "first-call warm-up skipped" in caplog.text
    assert served.one(json.dumps(X).encode())[0] == 200


def test_a_cuda_model_is_not_described(models, monkeypatch):
    path = models.torchscript()
    monkeypatch.setattr(
        model_module, "_load_artifact", lambda model_dir, device, unsafe: torch.jit.load(str(path / "model.pt"))
    )
    cuda = model_module.load(str(path), torch.device("cuda", 0), program="")  # what a GPU worker loads
    assert cuda.input_spec is None
    assert model_module.load(str(path), torch.device("cpu"), program="").input_spec == (((1, 3), torch.float32),)


def test_describe_input_false_leaves_it_out(models):
    assert (
        model_module.load(str(models.torchscript()), torch.device("cpu"), program="", describe_input=False).input_spec
        is None
    )


def archive_with_traced_inputs(tmp_path, payload: bytes):
    path = tmp_path / "crafted.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("crafted/traced_inputs.pkl", payload)
    return str(path)


class Boom:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_traced_inputs_are_read_without_running_any_other_global(tmp_path, capsys):
    payload = pickle.dumps({"forward": [Boom()]}, protocol=2)
    assert model_module._traced_inputs(archive_with_traced_inputs(tmp_path, payload)) is None
    assert "this must not run" not in capsys.readouterr().out


def test_traced_inputs_of_a_real_archive(tmp_path):
    path = tmp_path / "model.pt"
    trace(make_linear(), torch.rand(4, 3)).save(str(path))
    assert model_module._traced_inputs(str(path)) == [((4, 3), torch.float32)]


def test_auto_warmup_must_be_a_boolean(models):
    path = models.dir("cfg", {model_config.FILE: '{"auto_warmup": "no"}'})
    with pytest.raises(InvalidModelConfig, match="auto_warmup"):
        model_config.read(str(path))
    assert model_config.read(str(models.dir("plain"))).auto_warmup is True


def test_in_mms_the_warm_up_goes_through_mms_own_request_path(models, serve, predicts, monkeypatch):
    """After one quiet run of the sample, the rest run as MMS's worker runs a request (``Service.predict``:
    its unpacking, this handler's ``handle``, its packing), so a fresh worker's first request finds that warm."""
    from mms.service import Service

    answers = []
    original = Service.predict

    def spy(self, batch):
        answers.append(original(self, batch))
        return answers[-1]

    monkeypatch.setattr(Service, "predict", spy)
    served = serve(models.torchscript("m", make_linear()))
    assert len(answers) == FIRST_CALL_RUNS - 1 and len(predicts) == FIRST_CALL_RUNS
    assert all(b"Prediction success" in bytes(a) for a in answers)  # MMS's packing of a 200 answer
    assert served.one(json.dumps(X).encode())[0] == 200
