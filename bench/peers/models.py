"""The two models every server gets: the tiny one (forward far below 1 ms) and a compute-bound one (~10 ms).

Both take the same JSON body (one row of 16 floats) and answer 4 floats, so transport and JSON cost the
same and only the forward differs. The compute-bound model is a scripted MLP that expands the row into a
128 x 512 activation and runs it through 12 ``Linear(512, 512)`` + ReLU layers (about 0.8 GFLOP, 12 MiB of
weights): about 10 ms per forward on one thread of this machine's cores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from bench.common import FEATURES, OUTPUTS, write_model

ROWS, WIDTH, DEPTH = 128, 512, 12
KINDS = ("tiny", "compute")
DESCRIPTION = {
    "tiny": f"scripted `nn.Linear({FEATURES}, {OUTPUTS})`",
    "compute": f"scripted MLP: row -> {ROWS} x {WIDTH} activation -> {DEPTH} x (`Linear({WIDTH}, {WIDTH})` + ReLU) "
    f"-> mean -> `Linear({WIDTH}, {OUTPUTS})`",
}


class ComputeBound(torch.nn.Module):
    """One row in, 4 numbers out, with ~0.8 GFLOP of matrix multiplies in between."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = torch.nn.Linear(FEATURES, WIDTH)
        self.mix = torch.nn.Parameter(torch.randn(ROWS, 1))
        self.layers = torch.nn.ModuleList([torch.nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])
        self.head = torch.nn.Linear(WIDTH, OUTPUTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.expand(x)).unsqueeze(1) * self.mix  # [batch, ROWS, WIDTH]
        for layer in self.layers:
            h = torch.relu(layer(h))
        return self.head(h.mean(dim=1))


def write_compute_model(model_dir: Path, seed: int) -> torch.nn.Module:
    """A scripted ``ComputeBound`` saved as ``model_dir/model.pt``; returns the eager module."""
    torch.manual_seed(seed)
    module = ComputeBound().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(model_dir / "model.pt"))
    return module


def write(kind: str, model_dir: Path, seed: int) -> torch.nn.Module:
    """Write a model of ``kind`` (``tiny`` or ``compute``) to ``model_dir``."""
    return write_model(model_dir, seed) if kind == "tiny" else write_compute_model(model_dir, seed)
