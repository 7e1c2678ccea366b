"""Two small, real example models for demos and end-to-end checks.

Each builder trains a tiny torch model on a data set that ships inside
scikit-learn (no download), writes a SageMaker PyTorch model directory, and
returns an :class:`ExampleModel` holding one real request body and the answer it
should produce. Both directories are the layouts torch-mme serves:

* ``diabetes-regressor``: a TorchScript ``model.pt`` and no ``code/`` folder, so
  the server's default CSV decoding, ``model(tensor)`` and JSON encoding apply.
* ``digits-classifier``: a state_dict ``model.pth`` plus ``code/inference.py``
  with ``model_fn``/``input_fn``/``predict_fn``/``output_fn``.

Training is full-batch on a few hundred to ~1300 rows, so a build takes a few
seconds of CPU. The global torch RNG is seeded inside ``torch.random.fork_rng``
so that calling a builder leaves the caller's random state untouched.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from torch import nn

REGRESSOR_NAME = "diabetes-regressor"
CLASSIFIER_NAME = "digits-classifier"
CSV = "text/csv"
JSON = "application/json"
NPY = "application/x-npy"


@dataclass(frozen=True)
class ExampleModel:
    """A model directory written by a builder, with a request to send it and the answer to expect."""

    name: str
    model_dir: Path
    content_type: str
    accept: str
    sample_body: bytes
    expected: Any
    describe: str


# ---------------------------------------------------------------- regressor


class DiabetesMLP(nn.Module):
    """10 -> 32 -> 1 MLP that takes raw diabetes feature rows and returns the raw target.

    Feature and target standardisation live in buffers, so the scripted module
    needs no preprocessing from whoever serves it.
    """

    def __init__(
        self, x_mean: torch.Tensor, x_std: torch.Tensor, y_mean: float, y_std: float, hidden: int = 32
    ) -> None:
        super().__init__()
        self.register_buffer("x_mean", x_mean.clone())
        self.register_buffer("x_std", x_std.clone())
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(y_std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(x_mean.numel(), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std) * self.y_std + self.y_mean


def build_tabular_regressor(dest: Path, seed: int = 0) -> ExampleModel:
    """Train a diabetes-progression regressor and write it to ``dest/model.pt`` (TorchScript).

    ``seed`` sets the weight initialisation; the held-out rows are fixed.
    """
    dest = Path(dest)
    if (dest / "code" / "inference.py").exists():
        raise FileExistsError(f"{dest}/code/inference.py exists and would replace the defaults this model is served by")
    data = load_diabetes(scaled=False)  # raw units (age in years, sex 1/2, bmi, ...), not sklearn's pre-scaled copy
    # Held out: every fifth row, whatever the seed, so R^2 compares across seeds. (A random 80/20 split
    # swings test R^2 from ~0.33 to ~0.6 for ordinary least squares alone; this one gives OLS ~0.52.)
    held_out = np.arange(len(data.target)) % 5 == 0
    raw_train, raw_test = data.data[~held_out], data.data[held_out]
    x_train, x_test = raw_train.astype(np.float32), raw_test.astype(np.float32)
    y_train, y_test = data.target[~held_out].astype(np.float32), data.target[held_out]

    x_mean, x_std = torch.from_numpy(x_train.mean(axis=0)), torch.from_numpy(x_train.std(axis=0))
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiabetesMLP(x_mean, x_std, y_mean, y_std)
        # Fit on the standardised target: the loss is then O(1) and Adam's default scale suits it.
        inputs = (torch.from_numpy(x_train) - x_mean) / x_std
        targets = ((torch.from_numpy(y_train) - y_mean) / y_std).unsqueeze(1)
        # Few, gentle steps: on ~350 rows a longer fit only overfits (held-out R^2 falls).
        optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)
        for _ in range(100):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model.net(inputs), targets)
            loss.backward()
            optimizer.step()
    model.eval()

    dest.mkdir(parents=True, exist_ok=True)
    scripted = _script(model)
    with _quiet_jit():
        torch.jit.save(scripted, str(dest / "model.pt"))

    with torch.inference_mode():
        r2 = r2_score(y_test, scripted(torch.from_numpy(x_test)).squeeze(1).numpy())
    body = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in raw_test[:3]).encode()
    # The server parses each CSV cell with float() and stores float32: do the same here.
    parsed = np.array(
        [[float(cell) for cell in line.split(",")] for line in body.decode().splitlines()], dtype=np.float32
    )
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(parsed)).tolist()
    return ExampleModel(
        name=REGRESSOR_NAME,
        model_dir=dest,
        content_type=CSV,
        accept=JSON,
        sample_body=body,
        expected=expected,
        describe=(
            f"TorchScript MLP 10->32->1 on sklearn diabetes (raw features in, disease progression out); "
            f"held-out R^2 {r2:.3f} on {len(y_test)} rows"
        ),
    )


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with _quiet_jit():
        return torch.jit.script(model)


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's 'torch.jit.* is deprecated' warnings: TorchScript is the format model.pt must be in."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


# ---------------------------------------------------------------- classifier

# Written verbatim to code/inference.py. The builder trains the DigitsMLP class
# imported from that very file, so the served class and the trained one are one.
DIGITS_INFERENCE = '''\
"""Serving hooks for the digits classifier (written by torch_mme.examples).

Input: 8x8 grey images with pixel values 0..16 (scikit-learn's digits scale),
shaped (N, 8, 8) or (8, 8), as application/x-npy or application/json.
Output: JSON {"labels": [...], "probabilities": [[10 floats], ...]}.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from torch import nn

SIDE = 8
N_CLASSES = 10
MAX_PIXEL = 16.0
NPY = "application/x-npy"
JSON = "application/json"


class DigitsMLP(nn.Module):
    """64 -> 64 -> 10 MLP over flattened 8x8 images; returns logits."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images / MAX_PIXEL)


def model_fn(model_dir: str) -> nn.Module:
    model = DigitsMLP()
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == NPY:
        try:
            array = np.load(io.BytesIO(request_body), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError... for a bad file
            raise ValueError(f"body is not a valid .npy array: {exc}") from None
        if not isinstance(array, np.ndarray):
            raise ValueError("body is not a single .npy array")
    elif kind == JSON:
        try:
            value = json.loads(request_body)
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("JSON body must be a nested list of numbers shaped (N, 8, 8) or (8, 8)") from None
    else:
        raise ValueError(f"unsupported content type {content_type!r}; send {NPY} or {JSON}")
    return _images(array)


def _images(array: np.ndarray) -> torch.Tensor:
    if array.dtype.kind not in "iuf":
        raise ValueError(f"pixel values must be numbers, not {array.dtype}")
    if array.shape == (SIDE, SIDE):
        array = array[np.newaxis]
    if array.ndim != 3 or array.shape[1:] != (SIDE, SIDE) or array.shape[0] == 0:
        raise ValueError(f"expected images shaped (N, 8, 8) or (8, 8), got shape {tuple(array.shape)}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > MAX_PIXEL:
        raise ValueError("pixel values must lie in 0..16 (scikit-learn digits scale); rescale 0..255 images")
    return torch.from_numpy(array)


def predict_fn(data: torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.softmax(model(data.to(device)), dim=1)


def output_fn(prediction: torch.Tensor, accept: str) -> tuple[bytes, str]:
    """Always JSON: labels and class probabilities do not fit one CSV or .npy array."""
    probabilities = prediction.detach().float().cpu()
    body = {"labels": probabilities.argmax(dim=1).tolist(), "probabilities": probabilities.tolist()}
    return json.dumps(body).encode(), JSON
'''


def build_digits_classifier(dest: Path, seed: int = 0) -> ExampleModel:
    """Train a handwritten-digit classifier; write ``dest/model.pth`` (state_dict) and ``dest/code/inference.py``.

    ``seed`` sets the weight initialisation; the held-out images are fixed.
    """
    dest = Path(dest)
    script = dest / "code" / "inference.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(DIGITS_INFERENCE, encoding="utf-8")
    inference = _import(script, f"_torch_mme_examples_digits_{seed}")

    data = load_digits()
    images = data.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    # A fixed split (not the seed's) so that held-out accuracy compares across seeds.
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.25, random_state=0, stratify=data.target
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inference.DigitsMLP()
        inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
    model.eval()
    torch.save(model.state_dict(), dest / "model.pth")

    with torch.inference_mode():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    accuracy = float((predicted == y_test).mean())
    # The demo's check compares labels exactly, so show it held-out images the model gets right.
    chosen = np.flatnonzero(predicted == y_test)[:4]
    buffer = io.BytesIO()
    np.save(buffer, x_test[chosen], allow_pickle=False)
    return ExampleModel(
        name=CLASSIFIER_NAME,
        model_dir=dest,
        content_type=NPY,
        accept=JSON,
        sample_body=buffer.getvalue(),
        expected=[int(label) for label in y_test[chosen]],
        describe=(
            f"state_dict MLP 64->64->10 + code/inference.py on sklearn digits (8x8, pixels 0..16); "
            f"held-out accuracy {accuracy:.1%} on {len(y_test)} images"
        ),
    )


def _import(path: Path, module_name: str) -> ModuleType:
    """Import a file as a module without registering it in ``sys.modules`` (nothing else should find it)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_examples(dest: Path) -> list[ExampleModel]:
    """Build both example models, in ``dest/diabetes-regressor`` and ``dest/digits-classifier``."""
    dest = Path(dest)
    return [
        build_tabular_regressor(dest / REGRESSOR_NAME),
        build_digits_classifier(dest / CLASSIFIER_NAME),
    ]
