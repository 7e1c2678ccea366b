"""The tiny model the tests and the benchmarks share: a scripted ``nn.Linear(16, 4)`` and its JSON body."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

JSON_TYPE = "application/json"
FEATURES, OUTPUTS = 16, 4

ECHO_OWN_NAME = """
    import os

    def model_fn(model_dir):
        return os.path.basename(os.path.dirname(os.path.abspath(model_dir)))

    def input_fn(body, content_type):
        return body

    def predict_fn(data, model):
        return model

    def output_fn(prediction, accept):
        return {"model": prediction}, "application/json"
"""
"""A ``code/inference.py`` (dedent it) that answers ``{"model": <its folder's parent's name>}``: every answer
says which model served it (the endpoint's Zipf test and benchmark)."""


def write_model(model_dir: Path, seed: int) -> torch.nn.Module:
    """A scripted ``nn.Linear(16, 4)`` saved as ``model_dir/model.pt``; returns the eager module."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(FEATURES, OUTPUTS).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(model_dir / "model.pt"))
    return module


def request_body(seed: int = 123) -> bytes:
    """One row of 16 floats as a JSON body: ``[[x0, ..., x15]]``."""
    row = np.random.default_rng(seed).standard_normal(FEATURES).round(4).tolist()
    return json.dumps([row]).encode()
