"""Integration tier: the real MMS, started by our own ``torch-mme serve`` on a free port."""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from torch_mme.tools.local_server import LocalServer


def write_torchscript(model_dir: Path, seed: int = 0, features: int = 3, outputs: int = 2) -> torch.nn.Module:
    """A scripted Linear in ``model_dir/model.pt``; returns the module to compare against in-process."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(features, outputs).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(model_dir / "model.pt"))
    return module


def write_script_model(model_dir: Path, source: str, weights: torch.nn.Module | None = None) -> None:
    """``code/inference.py`` with ``source`` (and a state_dict ``model.pth`` when ``weights`` is given)."""
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(source))
    if weights is not None:
        torch.save(weights.state_dict(), model_dir / "model.pth")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def server(models_root: Path, tmp_path_factory: pytest.TempPathFactory):
    with logged_server(models_root, tmp_path_factory.mktemp("logs") / "serve.log") as server:
        yield server


@contextlib.contextmanager
def logged_server(
    models_root: Path, log_path: Path, env: dict[str, str] | None = None, timeout_s: int = 20
) -> Iterator[LocalServer]:
    """A started ``torch-mme serve`` logging to ``log_path`` (its ``log_path``), stopped on exit; the log is
    printed afterwards when TORCH_MME_SHOW_LOGS is set."""
    with open(log_path, "wb") as log:
        server = LocalServer(str(models_root), env=env, log=log, args=["--timeout", str(timeout_s)])
        server.log_path = log_path
        server.start()
        try:
            yield server
        finally:
            server.stop()
    if os.environ.get("TORCH_MME_SHOW_LOGS"):
        print(log_path.read_text())
