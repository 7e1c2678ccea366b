"""Fifty resident models behind one serve: the invariants of the scale benchmark (bench/scale.py), untimed.

Every model answers with its own weights; ListModels' pages (``limit`` and
``next_page_token`` in, ``nextPageToken`` out) hold every model exactly once;
the template records each model's pids (what the front finds its processes
by) and removes a record when the model goes; nothing is left after stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import torch

from tests.integration.conftest import descendants, logged_server
from torch_mme.runtime import processes

MODELS = 50
PAGE = 7


def write_models(root: Path) -> tuple[dict[str, str], bytes, torch.Tensor]:
    torch.manual_seed(0)
    module = torch.nn.Linear(3, 2).eval()
    body = [[0.5, -1.0, 2.0]]
    with torch.no_grad():
        expected = module(torch.tensor(body))
    scripted = torch.jit.script(module)  # shares the module's parameters
    bias = module.bias.detach().clone()
    folders = {}
    for i in range(MODELS):
        folder = root / f"m{i}" / "model"
        folder.mkdir(parents=True)
        with torch.no_grad():
            scripted.bias.copy_(bias + i)
        scripted.save(str(folder / "model.pt"))
        folders[f"m{i}"] = str(folder)
    return folders, json.dumps(body).encode(), expected


def list_pages(server) -> tuple[list[str], int]:
    names, pages, token = [], 0, None
    while True:
        query = f"?limit={PAGE}" + (f"&next_page_token={token}" if token else "")
        status, _, data = server.request("GET", "/models" + query)
        assert status == 200, data
        page = json.loads(data)
        assert len(page["models"]) <= PAGE
        names += [m["modelName"] for m in page["models"]]
        pages += 1
        token = page.get("nextPageToken")
        if not token:
            return names, pages
        assert pages <= MODELS, "ListModels does not end"


def test_fifty_resident_models_answer_list_and_leave_nothing_behind(tmp_path):
    folders, body, expected = write_models(tmp_path / "models")
    run_dir = tmp_path / "run"
    records = run_dir / processes.RECORDS
    with logged_server(tmp_path / "models", tmp_path / "serve.log", env={"TORCH_MME_RUN_DIR": str(run_dir)}) as server:
        for name, folder in folders.items():
            assert server.load(name, folder)[0] == 200, name
        for i, name in enumerate(folders):
            status, _, answer = server.invoke(name, body, "application/json")
            assert status == 200, answer
            assert torch.allclose(torch.tensor(json.loads(answer)), expected + i, atol=1e-5), (name, answer)

        names, pages = list_pages(server)
        assert sorted(names) == sorted(folders) and len(names) == MODELS
        assert pages == -(-MODELS // PAGE)

        assert sorted(p.name for p in records.iterdir()) == sorted(folders)  # one pid record per model
        family = processes.family(str(run_dir), server.process.pid, "m3")
        assert {p.pid for p in family} == {p.pid for p in processes.model_processes(server.process.pid, "m3")}
        status, _, data = server.request("GET", "/models/m3")
        assert status == 200 and json.loads(data)["memory"]["measuredUssBytes"] > 0

        assert server.unload("m3") == 200
        assert not (records / "m3").exists() and not processes.model_processes(server.process.pid, "m3")
        assert "m3" not in list_pages(server)[0]
        tree = [server.process, *descendants(server.process.pid)]
        pids = [p.pid for p in tree]
    assert server.process.poll() is not None
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not run_dir.exists() or not any(run_dir.iterdir())
