"""CUDA paths of the handler (no MMS, no Java): placement by gpu_id, CUDA OOM -> 507, GPU admission.

Skipped, with the reason shown, where CUDA is absent; run them on a GPU machine.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from mms.context import Context

import handler.entry
from handler.service import PyTorchHandler
from tests.unit.conftest import make_batch
from torch_mme.errors import OutOfMemory
from torch_mme.settings import Settings


def make_context(model_dir, name, gpu):
    return Context(name, str(model_dir), None, 1, gpu, "1.1.11")


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: run on a GPU machine")

HUGE = 2**50  # bytes no GPU has


def script_model(tmp_path, name, source):
    model_dir = tmp_path / name / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(source))
    return model_dir


def loaded(tmp_path, model_dir, gpu_id):
    service = PyTorchHandler(Settings(models_root=str(tmp_path)))
    context = make_context(model_dir, name=model_dir.parent.name, gpu=gpu_id)
    service.initialize(context)
    return service, context


def test_the_model_goes_to_the_gpu_mms_assigned(tmp_path):
    gpu_id = torch.cuda.device_count() - 1
    model_dir = tmp_path / "linear" / "model"
    model_dir.mkdir(parents=True)
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2)
    torch.jit.script(module).save(str(model_dir / "model.pt"))
    service, context = loaded(tmp_path, model_dir, gpu_id)
    assert {p.device for p in service.model.module.parameters()} == {torch.device("cuda", gpu_id)}
    data = make_batch(context, [(b"[[1, 2, 3]]", "application/json", "application/json")])
    answer = json.loads(service.handle(data, context)[0])
    expected = module(torch.tensor([[1.0, 2.0, 3.0]])).detach().numpy()
    assert torch.allclose(torch.tensor(answer), torch.from_numpy(expected), atol=1e-5)


def test_cuda_out_of_memory_at_load_is_507(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_MME_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("TORCH_MME_MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(handler.entry, "_service", PyTorchHandler())
    model_dir = script_model(
        tmp_path,
        "greedy",
        f"""
        import torch
        def model_fn(model_dir):
            return torch.empty({HUGE}, dtype=torch.uint8, device="cuda")
    """,
    )
    with pytest.raises(MemoryError):
        handler.entry.handle(None, make_context(model_dir, name="greedy", gpu=0))
    report = json.loads((tmp_path / "run" / "load-errors" / "greedy.json").read_text())
    assert report["code"] == 507


def test_cuda_out_of_memory_at_invoke_is_507(tmp_path):
    model_dir = script_model(
        tmp_path,
        "spiky",
        f"""
        import torch
        def model_fn(model_dir):
            return torch.nn.Identity()
        def predict_fn(data, model):
            return torch.empty({HUGE}, dtype=torch.uint8, device=data.device)
    """,
    )
    service, context = loaded(tmp_path, model_dir, 0)
    data = make_batch(context, [(b"[1]", "application/json", None)])
    body = json.loads(service.handle(data, context)[0])
    assert context.get_response_status(0)[0] == 507 and body["code"] == 507


def test_gpu_admission_refuses_before_any_weight_is_loaded(tmp_path):
    model_dir = script_model(
        tmp_path,
        "declared",
        """
        import pathlib
        def model_fn(model_dir):
            pathlib.Path(model_dir, "model_fn-ran").touch()
    """,
    )
    total = torch.cuda.get_device_properties(0).total_memory
    (model_dir / "torch-mme.json").write_text(json.dumps({"memory_mb": 2 * total / 2**20}))
    with pytest.raises(OutOfMemory, match="GPU memory"):
        loaded(tmp_path, model_dir, 0)
    assert not (model_dir / "model_fn-ran").exists()
