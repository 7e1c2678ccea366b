"""The MMS entry point ``handler.entry.handle``: load errors surface, with a report and the right status."""

from __future__ import annotations

import json

import numpy as np
import pytest

import handler.entry
from handler.entry import handle
from handler.service import PyTorchHandler
from tests.unit.conftest import NET_CLASS
from torch_mme.errors import ModelLoadError, ModelOutsideRoot

X = [[1.0, 2.0, 3.0]]


@pytest.fixture
def run_dir(monkeypatch, tmp_path, models_root):
    """The environment ``torch-mme serve`` gives a worker, and a fresh module-level service."""
    run = tmp_path / "run"
    monkeypatch.setenv("TORCH_MME_RUN_DIR", str(run))
    monkeypatch.setenv("TORCH_MME_MODEL_DIR", str(models_root))
    monkeypatch.setattr(handler.entry, "_service", PyTorchHandler())
    return run


def report(run_dir, name):
    return json.loads((run_dir / "load-errors" / f"{name}.json").read_text())


def test_load_then_invoke(run_dir, models, make_context, make_batch, expected):
    ctx = make_context(models.torchscript(), name="good")
    assert handle(None, ctx) is None
    data = make_batch(ctx, [(json.dumps(X).encode(), "application/json", "application/json")])
    [body] = handle(data, ctx)
    assert ctx.get_response_status(0)[0] == 200
    np.testing.assert_allclose(json.loads(body), expected(X), atol=1e-6)
    assert not (run_dir / "load-errors").exists()


def test_broken_model_raises_and_leaves_a_report(run_dir, models, make_context):
    ctx = make_context(models.dir("empty"), name="broken")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)
    found = report(run_dir, "broken")
    assert set(found) == {"code", "type", "message"}
    assert found["code"] == 500
    assert found["type"] == "ModelLoadError"
    assert "model.pt" in found["message"]
    assert "Traceback" not in found["message"]
    assert not list((run_dir / "load-errors").glob("*.tmp"))


def test_inference_py_failing_to_import_is_reported(run_dir, models, make_context):
    ctx = make_context(models.dir("bad-code", {"code/inference.py": "raise ImportError('no cv2')\n"}), name="bad-code")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)
    assert "ImportError: no cv2" in report(run_dir, "bad-code")["message"]


@pytest.mark.parametrize(
    "raise_",
    [
        "raise MemoryError()",
        'raise RuntimeError("DefaultCPUAllocator: can\'t allocate memory: you tried to allocate 9")',
    ],
    ids=["MemoryError", "cpu-allocator"],
)
def test_out_of_memory_at_load_raises_memory_error_and_reports_507(run_dir, models, make_context, raise_):
    code = f"def model_fn(model_dir):\n    {raise_}\n"
    ctx = make_context(models.dir("big", {"code/inference.py": code}), name="big")
    with pytest.raises(MemoryError):
        handle(None, ctx)
    found = report(run_dir, "big")
    assert found["code"] == 507
    assert found["type"] == "OutOfMemory"


def test_model_outside_the_root_is_reported_400(run_dir, tmp_path, make_context):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ctx = make_context(outside, name="escape")
    with pytest.raises(ModelOutsideRoot):
        handle(None, ctx)
    found = report(run_dir, "escape")
    assert (found["code"], found["type"]) == (400, "ModelOutsideRoot")


def test_model_name_with_a_slash_gives_one_report_file(run_dir, models, make_context):
    ctx = make_context(models.dir("empty"), name="team/model")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)
    assert report(run_dir, "team_model")["code"] == 500


def test_no_run_dir_means_no_report(run_dir, monkeypatch, tmp_path, models, make_context):
    monkeypatch.delenv("TORCH_MME_RUN_DIR")
    ctx = make_context(models.dir("empty"), name="quiet")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)
    assert not list(tmp_path.rglob("load-errors"))


def test_unwritable_run_dir_still_raises_the_load_error(run_dir, monkeypatch, tmp_path, models, make_context):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("TORCH_MME_RUN_DIR", str(blocker))
    ctx = make_context(models.dir("empty"), name="m")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)


def test_unexpected_exception_is_reported_as_a_load_error(run_dir, monkeypatch, models, make_context):
    import handler.model

    def explode(*args, **kwargs):
        raise KeyError("gpu_id")

    monkeypatch.setattr(handler.model, "load", explode)
    ctx = make_context(models.torchscript(), name="odd")
    with pytest.raises(KeyError):
        handle(None, ctx)
    found = report(run_dir, "odd")
    assert (found["code"], found["type"]) == (500, "ModelLoadError")
    assert "KeyError" in found["message"]


NET = NET_CLASS


def test_unsafe_pickle_refused_through_the_entry_point(run_dir, models, make_context):
    ctx = make_context(models.whole_module("whole", {"code/inference.py": NET}, "inference.py"), name="whole")
    with pytest.raises(ModelLoadError):
        handle(None, ctx)
    assert "TORCH_MME_ALLOW_UNSAFE_PICKLE" in report(run_dir, "whole")["message"]


def test_unsafe_pickle_allowed_by_the_environment(run_dir, monkeypatch, models, make_context, make_batch, expected):
    monkeypatch.setenv("TORCH_MME_ALLOW_UNSAFE_PICKLE", "true")
    ctx = make_context(models.whole_module("whole", {"code/inference.py": NET}, "inference.py"), name="whole")
    assert handle(None, ctx) is None
    [body] = handle(make_batch(ctx, [(json.dumps(X).encode(), None, None)]), ctx)
    np.testing.assert_allclose(json.loads(body), expected(X), atol=1e-6)
