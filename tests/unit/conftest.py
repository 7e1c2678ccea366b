"""Shared fixtures: tiny models written into tmp_path, and a real MMS context.

The context is MMS's own ``mms.context.Context`` with one
``RequestProcessor`` per batch item, so headers, statuses and content types go
through the same code MMS runs in a worker.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mms.context import Context, RequestProcessor

from handler.service import PyTorchHandler
from torch_mme.settings import Settings

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"

# Builds the reference module of every test model: nn.Linear(3, 2) with seed 0.
STATE_DICT_MODEL_FN = """
    import os

    import torch


    def model_fn(model_dir):
        model = torch.nn.Linear(3, 2)
        state = torch.load(os.path.join(model_dir, "model.pth"), weights_only=True)
        model.load_state_dict(state)
        return model
"""

NET_CLASS = """
    import torch


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x)
"""


@pytest.fixture(autouse=True)
def _clean_process_state(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No test sees another's environment, ``sys.path`` entries or user modules."""
    for name in list(os.environ):
        if name.startswith(("TORCH_MME_", "SAGEMAKER_")):
            monkeypatch.delenv(name)
    saved_path = list(sys.path)
    base = str(tmp_path_factory.getbasetemp())
    yield
    sys.path[:] = saved_path
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None) or ""
        if name == "inference" or origin.startswith(base):
            del sys.modules[name]


def make_linear() -> torch.nn.Linear:
    """The reference module (training mode, as freshly built)."""
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


@pytest.fixture
def linear() -> torch.nn.Linear:
    return make_linear()


@pytest.fixture
def expected(linear: torch.nn.Linear) -> Callable[[Any], np.ndarray]:
    """What the reference module answers for an input, as numpy."""

    def run(x: Any) -> np.ndarray:
        with torch.no_grad():
            return linear.eval()(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()

    return run


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def settings(models_root: Path) -> Settings:
    return Settings(models_root=str(models_root))


class ModelFactory:
    """Writes model directories under the models root."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, name: str, files: dict[str, str | bytes] | None = None) -> Path:
        """A model directory holding ``files`` (text is dedented)."""
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        for rel, content in (files or {}).items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(textwrap.dedent(content))
        return path

    def torchscript(self, name: str = "ts", module: torch.nn.Module | None = None) -> Path:
        path = self.dir(name)
        torch.jit.script(module if module is not None else make_linear()).save(str(path / "model.pt"))
        return path

    def state_dict(
        self, name: str = "sd", hooks: str = "", code: str | None = None, extra: dict[str, str | bytes] | None = None
    ) -> Path:
        """``model.pth`` holding the reference state_dict, plus ``code/inference.py``.

        The script is ``code``, or the reference ``model_fn`` followed by ``hooks``.
        """
        if code is None:
            code = textwrap.dedent(STATE_DICT_MODEL_FN) + "\n\n" + textwrap.dedent(hooks)
        path = self.dir(name, {"code/inference.py": code, **(extra or {})})
        torch.save(make_linear().state_dict(), path / "model.pth")
        return path

    def whole_module(self, name: str, files: dict[str, str], class_file: str) -> Path:
        """``model.pth`` holding a pickled ``Net`` whose class lives in ``code/<class_file>``.

        The class is imported under its module name so the pickle refers to it
        by that name, then forgotten, so loading must find it through ``code/``.
        """
        path = self.dir(name, files)
        module_name = Path(class_file).stem
        spec = importlib.util.spec_from_file_location(module_name, path / "code" / class_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
            net = module.Net()
            net.linear.load_state_dict(make_linear().state_dict())
            torch.save(net, path / "model.pth")
        finally:
            del sys.modules[module_name]
        return path


@pytest.fixture
def models(models_root: Path) -> ModelFactory:
    return ModelFactory(models_root)


@pytest.fixture
def make_context() -> Callable[..., Context]:
    def make(model_dir: Path | str, name: str = "m", gpu: int | None = None) -> Context:
        return Context(name, str(model_dir), None, 1, gpu, "1.1.11")

    return make


def make_batch(ctx: Context, items: list[tuple[Any, str | None, str | None]]) -> list[dict]:
    """Sets one RequestProcessor per item on ``ctx`` and returns MMS's ``data`` list.

    A header given as None is left out of that item's headers.
    """
    processors, data = [], []
    for body, content_type, accept in items:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        processors.append(RequestProcessor(headers))
        data.append({"body": body})
    ctx.request_processor = processors
    return data


@pytest.fixture(name="make_batch")
def make_batch_fixture() -> Callable[[Context, list], list[dict]]:
    return make_batch


class Served:
    """A loaded PyTorchHandler with its context, and a helper to send batches."""

    def __init__(self, handler: PyTorchHandler, ctx: Context) -> None:
        self.handler = handler
        self.ctx = ctx

    def send(self, items: list[tuple[Any, str | None, str | None]]) -> list[tuple[int, str, bytes]]:
        """(status, response content type, body) per item."""
        data = make_batch(self.ctx, items)
        bodies = self.handler.handle(data, self.ctx)
        assert len(bodies) == len(items)
        return [
            (self.ctx.get_response_status(i)[0], self.ctx.get_response_content_type(i), bodies[i])
            for i in range(len(items))
        ]

    def one(self, body: Any, content_type: str | None = JSON, accept: str | None = JSON) -> tuple[int, str, bytes]:
        return self.send([(body, content_type, accept)])[0]


@pytest.fixture
def serve(settings: Settings, make_context: Callable[..., Context]) -> Callable[..., Served]:
    """Loads a model directory into a fresh PyTorchHandler through ``handle(None, ctx)``."""

    def load(model_dir: Path, settings_: Settings | None = None) -> Served:
        handler = PyTorchHandler(settings=settings_ or settings)
        ctx = make_context(model_dir)
        assert handler.handle(None, ctx) is None
        return Served(handler, ctx)

    return load


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def assert_error_body(body: bytes, status: int, type_name: str | None = None) -> dict:
    """A short JSON error: exactly code/type/message, the code matching the status, no traceback."""
    error = json.loads(body)
    assert set(error) == {"code", "type", "message"}
    assert error["code"] == status
    assert "Traceback" not in body.decode()
    assert "\n" not in error["message"]
    if type_name is not None:
        assert error["type"] == type_name
    return error


@pytest.fixture
def codec_helpers() -> Any:
    """npy/npz writers and the error-body check, for test modules (conftest is not importable)."""

    class Helpers:
        npy = staticmethod(npy_bytes)
        npz = staticmethod(npz_bytes)
        error = staticmethod(assert_error_body)

    return Helpers
