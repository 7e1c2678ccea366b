"""Which device a worker's model lives on."""

from __future__ import annotations

import torch

from torch_mme.errors import OutOfMemory
from torch_mme.memory import estimate

MB = 2**20


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


def admit(model_dir: str, device: torch.device, headroom_mb: int, memory_mb: float | None = None) -> None:
    """On a GPU, refuse (507) a model whose weights would not fit in the device's free memory, before loading it.

    The host-memory admission happens in the front before the worker starts;
    GPU memory is only known here, in the worker that owns the device. ``memory_mb`` is what the model's
    ``torch-mme.json`` declares; the process's own overhead is host memory, not counted here.
    """
    if device.type != "cuda":
        return
    needed = estimate(model_dir, memory_mb).bytes
    free, _ = torch.cuda.mem_get_info(device)
    if needed > free - headroom_mb * MB:
        raise OutOfMemory(
            f"model needs about {needed / MB:.0f} MB of GPU memory and {device} has {free / MB:.0f} MB free "
            f"({headroom_mb} MB headroom)"
        )
