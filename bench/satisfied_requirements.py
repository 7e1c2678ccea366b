"""What a user feels on a miss when a model's ``code/requirements.txt`` is already satisfied by the image.

LoadModel time through ``serve`` of a tiny TorchScript model, each load under a new name and with an empty
dependency folder, in three forms: without requirements; with ``numpy`` and ``torch`` (satisfied by the
image: no pip now); and the same requirements with pip forced to run as before (an empty ``code/wheels/``
and a requirement unique to each load, so no dependency folder is ever reused: pip answers "Requirement
already satisfied" every time). Goal: the satisfied form under 0.3 s, without calling pip.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    JSON_TYPE,
    finish,
    new_result,
    request_body,
    summarize,
    write_model,
    write_results,
)
from bench.report import document, goals_table, table
from torch_mme.tools.local_server import LocalServer

FORMS = {
    "none": "no code/requirements.txt",
    "satisfied": "numpy + torch, satisfied by the image (no pip)",
    "pip": "numpy + torch with pip run as before (code/wheels/ present, a new folder each load)",
}


def _model(root: Path, name: str, form: str, i: int) -> Path:
    model_dir = root / name / "model"
    write_model(model_dir, seed=i)
    code = model_dir / "code"
    if form == "satisfied":
        code.mkdir()
        (code / "requirements.txt").write_text("numpy\ntorch\n")
    elif form == "pip":
        (code / "wheels").mkdir(parents=True)
        (code / "requirements.txt").write_text(f"numpy>=1.{i}\ntorch\n")  # a new dependency folder each load
    return model_dir


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    loads = 3 if quick else 8
    began = time.perf_counter()
    result = new_result("satisfied_requirements", quick)
    body = request_body()
    samples: dict[str, list[float]] = {form: [] for form in FORMS}
    with tempfile.TemporaryDirectory(prefix="bench-reqs-") as tmp:
        root = Path(tmp) / "models"
        env = {"TORCH_MME_DEPS_DIR": str(Path(tmp) / "deps"), "TORCH_MME_PIP_INDEX": "off"}
        with LocalServer(str(root), env=env) as server:
            warm = _model(root, "warmup", "none", 0)
            assert server.load("warmup", str(warm))[0] == 200 and server.unload("warmup") == 200
            for i in range(loads):
                for form in FORMS:  # interleaved, so a slow moment of the machine hits every form alike
                    name = f"{form}-{i}"
                    model_dir = _model(root, name, form, i)
                    started = time.perf_counter()
                    status, answer = server.load(name, str(model_dir))
                    samples[form].append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"LoadModel {name} answered {status}: {answer}")
                    assert server.invoke(name, body, JSON_TYPE)[0] == 200
                    assert server.unload(name) == 200
        deps = sorted(p.name for p in (Path(tmp) / "deps").glob("*") if not p.name.startswith("."))
    finish(result, began)
    result["load_s"] = {form: summarize(values, 1.0, "s") for form, values in samples.items()}
    result["dependency_folders"] = len(deps)
    satisfied = result["load_s"]["satisfied"]["p50"]
    result["goals"] = {
        "satisfied requirements: LoadModel p50 < 0.3 s": satisfied < 0.3,
        "satisfied requirements: no pip (no dependency folder)": len(deps) == loads,  # only the 'pip' form's
    }
    write_results(result, markdown(result), Path(out_dir))
    return result


def markdown(result: dict[str, Any]) -> str:
    loads = result["load_s"]["pip"]["n"]
    rows = [
        (label, *(f"{result['load_s'][form][k]:.3f} s" for k in ("p50", "p90", "max"))) for form, label in FORMS.items()
    ]
    folders = result["dependency_folders"]
    return document(
        "LoadModel of a model whose code/requirements.txt the image already satisfies",
        result,
        table(["form", "LoadModel p50", "p90", "max"], rows),
        [f"- dependency folders created: {folders} (all by the 'pip' form: the satisfied form calls no pip)"],
        goals_table(result["goals"]),
        facts=[
            f"model: scripted `nn.Linear(16, 4)` through `torch-mme serve` (template on); {loads} LoadModels per "
            "form, each a new name, interleaved; TORCH_MME_PIP_INDEX=off"
        ],
    )
