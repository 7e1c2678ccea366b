"""Serving hooks for the wine classifier, weights in safetensors.

model.safetensors holds the tensors of a 13 -> 32 -> 3 MLP and its feature scaling; model_fn builds
the module and loads them with the safetensors package (code/requirements.txt). No pickle anywhere.

Input: rows of the 13 features of scikit-learn's wine data, see table_rows.py:
  application/json  [{"alcohol": 13.2, "malic_acid": 1.78, ...}, ...]  or  [[13.2, 1.78, ...], ...]
  text/csv          one row per line (optional header line)
Output: {"labels": [...], "probabilities": [[3 floats], ...]} as application/json (or .npz); the labels
index CLASSES (the three cultivars).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

from table_rows import parse_rows

FEATURES = [
    "alcohol",
    "malic_acid",
    "ash",
    "alcalinity_of_ash",
    "magnesium",
    "total_phenols",
    "flavanoids",
    "nonflavanoid_phenols",
    "proanthocyanins",
    "color_intensity",
    "hue",
    "od280/od315_of_diluted_wines",
    "proline",
]
CLASSES = ["class_0", "class_1", "class_2"]
WEIGHTS = "model.safetensors"


class WineMLP(nn.Module):
    """Raw feature rows in, class logits out; the standardisation is part of the weights."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(len(FEATURES)))
        self.register_buffer("x_std", torch.ones(len(FEATURES)))
        self.net = nn.Sequential(nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std)


def model_fn(model_dir: str) -> nn.Module:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the server sets this worker's GPU
    model = WineMLP()
    model.load_state_dict(load_file(os.path.join(model_dir, WEIGHTS), device="cpu"))
    return model.to(device).eval()


def input_fn(request_body: bytes, content_type: str) -> torch.Tensor:
    return torch.from_numpy(parse_rows(request_body, content_type, FEATURES))


def predict_fn(data: torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():  # a user's predict_fn runs as it is, as in SageMaker: no gradients needed here
        return torch.softmax(model(data.to(device)), dim=1)


def output_fn(prediction: torch.Tensor, accept: str) -> dict:
    probabilities = prediction.detach().float().cpu()
    return {"labels": probabilities.argmax(dim=1), "probabilities": probabilities}
