"""Model directories: every layout SageMaker PyTorch users ship, and the broken ones."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from handler.service import PyTorchHandler, check_inside
from tests.unit.conftest import NET_CLASS
from torch_mme.errors import ModelLoadError, ModelOutsideRoot, OutOfMemory
from torch_mme.settings import Settings

X = [[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]]


def answer(served, x=X):
    status, content_type, body = served.one(json.dumps(x).encode())
    assert (status, content_type) == (200, "application/json"), body
    return np.array(json.loads(body), dtype=np.float32)


def load_error(settings, make_context, model_dir, error=ModelLoadError):
    handler = PyTorchHandler(settings=settings)
    with pytest.raises(error) as info:
        handler.initialize(make_context(model_dir))
    assert handler.model is None
    return info.value


# (a) TorchScript model.pt


def test_torchscript_model_pt(models, serve, expected):
    served = serve(models.torchscript())
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)


# (b) state_dict in model.pth plus model_fn


def test_state_dict_with_model_fn(models, serve, expected):
    served = serve(models.state_dict())
    assert isinstance(served.handler.model.module, torch.nn.Linear)
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)


def test_state_dict_without_model_fn_is_refused(models, settings, make_context, linear):
    model_dir = models.dir("sd-only")
    torch.save(linear.state_dict(), model_dir / "model.pth")
    error = load_error(settings, make_context, model_dir)
    assert "state_dict" in str(error) and "model_fn" in str(error)


# (c) a whole pickled module

NET_IN_INFERENCE = {"code/inference.py": NET_CLASS}

NET_IN_HELPER = {
    "code/netdef.py": NET_IN_INFERENCE["code/inference.py"],
    "code/inference.py": "from netdef import Net  # noqa: F401\n",
}


@pytest.fixture(params=["class-in-inference", "class-in-helper"])
def whole_module_dir(request, models):
    if request.param == "class-in-inference":
        return models.whole_module("whole", NET_IN_INFERENCE, "inference.py")
    return models.whole_module("whole", NET_IN_HELPER, "netdef.py")


def test_whole_pickled_module_is_refused_by_default(whole_module_dir, settings, make_context):
    error = load_error(settings, make_context, whole_module_dir)
    assert "TORCH_MME_ALLOW_UNSAFE_PICKLE" in str(error)
    assert error.status == 500


def test_whole_pickled_module_loads_when_allowed(whole_module_dir, serve, models_root, expected):
    served = serve(whole_module_dir, Settings(allow_unsafe_pickle=True, models_root=str(models_root)))
    assert type(served.handler.model.module).__name__ == "Net"
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)


def test_whole_pickled_module_whose_class_is_gone_fails_cleanly(models, models_root, make_context):
    model_dir = models.whole_module("orphan", NET_IN_HELPER, "netdef.py")
    (model_dir / "code" / "netdef.py").unlink()
    (model_dir / "code" / "inference.py").unlink()
    settings = Settings(allow_unsafe_pickle=True, models_root=str(models_root))
    error = load_error(settings, make_context, model_dir)
    assert "netdef" in str(error)


# (f) helper modules beside inference.py

HELPERS_CODE = {
    "code/helpers.py": """
        def scale(tensor):
            return tensor * 3
    """,
    "code/inference.py": """
        import os

        import torch
        from helpers import scale


        def model_fn(model_dir):
            model = torch.nn.Linear(3, 2)
            model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
            return model


        def predict_fn(data, model):
            return scale(model(data))
    """,
}


def test_inference_py_imports_a_helper_beside_it(models, serve, expected):
    code = HELPERS_CODE["code/inference.py"]
    served = serve(models.state_dict("helped", code=code, extra={"code/helpers.py": HELPERS_CODE["code/helpers.py"]}))
    np.testing.assert_allclose(answer(served), 3 * expected(X), atol=1e-5)


# (g)-(j) broken directories


def test_model_pt_holding_a_state_dict_without_model_fn(models, settings, make_context, linear):
    model_dir = models.dir("saved-not-scripted")
    torch.save(linear.state_dict(), model_dir / "model.pt")
    error = load_error(settings, make_context, model_dir)
    assert "state_dict" in str(error)
    assert "model_fn" in str(error)


def test_empty_directory(models, settings, make_context):
    error = load_error(settings, make_context, models.dir("empty"))
    assert "model.pt" in str(error) and "model.pth" in str(error) and "model_fn" in str(error)


def test_missing_directory(models_root, settings, make_context):
    error = load_error(settings, make_context, models_root / "nope")
    assert "does not exist" in str(error)


@pytest.mark.parametrize("filename", ["model.pt", "model.pth"])
@pytest.mark.parametrize("allow_unsafe_pickle", [False, True])
def test_corrupt_artifact(models, models_root, make_context, filename, allow_unsafe_pickle):
    garbage = b"\x00\x01" + np.random.default_rng(0).bytes(512)
    model_dir = models.dir("corrupt", {filename: garbage})
    settings = Settings(allow_unsafe_pickle=allow_unsafe_pickle, models_root=str(models_root))
    error = load_error(settings, make_context, model_dir)
    assert filename in str(error)


def test_corrupt_model_pth_is_not_blamed_on_safe_loading(models, settings, make_context):
    """A damaged file should not be answered with advice to turn on unsafe unpickling."""
    garbage = b"\x00\x01" + np.random.default_rng(0).bytes(512)
    error = load_error(settings, make_context, models.dir("corrupt", {"model.pth": garbage}))
    assert "TORCH_MME_ALLOW_UNSAFE_PICKLE" not in str(error)


def test_pickled_value_that_is_not_a_module(models, settings, make_context):
    model_dir = models.dir("tensor")
    torch.save(torch.ones(3), model_dir / "model.pth")
    error = load_error(settings, make_context, model_dir)
    assert "not a module" in str(error)


def test_inference_py_raising_at_import(models, settings, make_context):
    model_dir = models.dir("bad-code", {"code/inference.py": "raise RuntimeError('no GPU driver here')\n"})
    error = load_error(settings, make_context, model_dir)
    assert "inference.py" in str(error)
    assert "RuntimeError: no GPU driver here" in str(error)


def test_inference_py_with_a_missing_import(models, settings, make_context):
    model_dir = models.dir("bad-import", {"code/inference.py": "import not_installed_anywhere_xyz\n"})
    error = load_error(settings, make_context, model_dir)
    assert "not_installed_anywhere_xyz" in str(error)


def test_model_fn_raising(models, settings, make_context):
    code = "def model_fn(model_dir):\n    raise FileNotFoundError('weights.bin')\n"
    error = load_error(settings, make_context, models.dir("bad-fn", {"code/inference.py": code}))
    assert "model_fn failed: FileNotFoundError: weights.bin" in str(error)


@pytest.mark.parametrize("exc", ["MemoryError()", 'RuntimeError("DefaultCPUAllocator: can\'t allocate memory: x")'])
def test_model_fn_out_of_memory(models, settings, make_context, exc):
    code = f"def model_fn(model_dir):\n    raise {exc}\n"
    error = load_error(settings, make_context, models.dir("oom-fn", {"code/inference.py": code}), OutOfMemory)
    assert error.status == 507


def test_transform_fn_with_input_fn_is_refused(models, settings, make_context):
    hooks = """
        def transform_fn(model, body, content_type, accept):
            return body

        def input_fn(body, content_type):
            return body
    """
    error = load_error(settings, make_context, models.state_dict("both", hooks=hooks))
    assert "transform_fn" in str(error)


# eval() at load


class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.dropout = torch.nn.Dropout(p=0.9)

    def forward(self, x):
        return self.dropout(self.linear(x))


def test_torchscript_module_is_put_in_eval_mode(models, serve):
    module = Scaled()
    assert module.training
    served = serve(models.torchscript("drop", module))
    loaded = served.handler.model.module
    assert loaded.training is False
    assert all(not m.training for m in loaded.modules())
    torch.manual_seed(1)
    first = answer(served)
    np.testing.assert_array_equal(first, answer(served))  # dropout off: the same answer twice
    with torch.no_grad():
        np.testing.assert_allclose(first, module.eval().linear(torch.tensor(X)).numpy(), atol=1e-6)


def test_model_fn_module_is_put_in_eval_mode(models, serve):
    served = serve(models.state_dict())
    assert served.handler.model.module.training is False


# the models root


def test_model_dir_outside_the_root(tmp_path, settings, make_context, linear):
    outside = tmp_path / "elsewhere" / "m"
    outside.mkdir(parents=True)
    torch.jit.script(linear).save(str(outside / "model.pt"))
    error = load_error(settings, make_context, outside, ModelOutsideRoot)
    assert error.status == 400


def test_symlink_inside_the_root_pointing_outside(tmp_path, models_root, settings, make_context, linear):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    torch.jit.script(linear).save(str(outside / "model.pt"))
    os.symlink(outside, models_root / "link")
    error = load_error(settings, make_context, models_root / "link", ModelOutsideRoot)
    assert error.status == 400


def test_dotdot_out_of_the_root(tmp_path, models_root, settings, make_context):
    (tmp_path / "elsewhere").mkdir()
    load_error(settings, make_context, models_root / ".." / "elsewhere", ModelOutsideRoot)


def test_sibling_with_the_root_as_prefix_is_outside(tmp_path, models_root, settings, make_context):
    sibling = tmp_path / (models_root.name + "-evil") / "m"
    sibling.mkdir(parents=True)
    load_error(settings, make_context, sibling, ModelOutsideRoot)


def test_symlink_within_the_root_is_accepted(models, models_root, serve, expected):
    target = models.torchscript("real")
    os.symlink(target, models_root / "alias")
    served = serve(models_root / "alias")
    np.testing.assert_allclose(answer(served), expected(X), atol=1e-6)


def test_check_inside_returns_the_real_path(models, models_root):
    target = models.dir("real")
    os.symlink(target, models_root / "alias")
    assert check_inside(str(models_root / "alias"), str(models_root)) == os.path.realpath(target)
