"""Device choice: MMS's gpu_id, honoured when CUDA is present."""

from __future__ import annotations

import pytest
import torch

from handler.device import device_for


@pytest.fixture
def cuda(monkeypatch):
    """CUDA mocked present with two GPUs; returns the list of set_device calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    return calls


@pytest.fixture
def no_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(device))
    return calls


def test_no_gpu_id_is_cpu(cuda):
    assert device_for(None) == torch.device("cpu")
    assert cuda == []


@pytest.mark.parametrize(("gpu_id", "index"), [(0, 0), (1, 1), (3, 1), (4, 0)])
def test_gpu_id_wraps_around_the_gpus_present(cuda, gpu_id, index):
    device = device_for(gpu_id)
    assert device == torch.device("cuda", index)
    assert str(device) == f"cuda:{index}"
    assert cuda == [device]


def test_gpu_id_given_as_a_string(cuda):
    assert device_for("3") == torch.device("cuda", 1)


def test_gpu_id_without_cuda_is_cpu(no_cuda):
    assert device_for(0) == torch.device("cpu")
    assert no_cuda == []


def test_initialize_puts_the_model_on_the_cpu_without_cuda(no_cuda, models, serve, make_context, settings):
    from handler.service import PyTorchHandler

    handler = PyTorchHandler(settings=settings)
    handler.initialize(make_context(models.torchscript(), gpu=0))
    assert handler.model.device == torch.device("cpu")
