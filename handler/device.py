"""Which device a worker's model lives on."""

from __future__ import annotations

import torch


def device_for(gpu_id: int | None) -> torch.device:
    """``cuda:<gpu_id>`` when MMS gave this worker a GPU and CUDA is present, else CPU.

    MMS assigns ``gpu_id`` round-robin across workers; the SageMaker PyTorch
    toolkit ignores it and stacks every model on ``cuda:0``.
    """
    if gpu_id is None or not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(gpu_id) % torch.cuda.device_count())
    torch.cuda.set_device(device)  # user code that says "cuda" lands on this worker's GPU
    return device
