"""GPU admission with the CUDA memory query mocked: runs everywhere (test_cuda.py has the real GPU tests)."""

from __future__ import annotations

import pytest
import torch

from handler import device
from torch_mme.errors import OutOfMemory

MB = 2**20


@pytest.fixture
def gpu_with_free_memory(monkeypatch):
    def set_free(free_mb: int) -> None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (free_mb * MB, 80_000 * MB))

    return set_free


def test_a_model_that_does_not_fit_the_gpu_is_refused_with_the_figures(tmp_path, gpu_with_free_memory):
    gpu_with_free_memory(1000)
    with pytest.raises(OutOfMemory, match=r"needs about 900 MB of GPU memory and cuda:1 has 1000 MB free"):
        device.admit(str(tmp_path), torch.device("cuda", 1), headroom_mb=256, memory_mb=900)


def test_a_model_that_fits_the_gpu_is_admitted(tmp_path, gpu_with_free_memory):
    gpu_with_free_memory(1000)
    device.admit(str(tmp_path), torch.device("cuda", 0), headroom_mb=256, memory_mb=500)


def test_weights_are_estimated_from_the_artifact_when_nothing_is_declared(tmp_path, gpu_with_free_memory):
    torch.save(torch.nn.Linear(1024, 1024).state_dict(), tmp_path / "model.pth")  # 4 MB of weights
    gpu_with_free_memory(4)
    with pytest.raises(OutOfMemory):
        device.admit(str(tmp_path), torch.device("cuda", 0), headroom_mb=0)
    gpu_with_free_memory(64)
    device.admit(str(tmp_path), torch.device("cuda", 0), headroom_mb=0)


def test_cpu_models_are_not_checked_against_gpu_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: pytest.fail("queried the GPU for a CPU model"))
    device.admit(str(tmp_path), torch.device("cpu"), headroom_mb=0, memory_mb=10**6)
