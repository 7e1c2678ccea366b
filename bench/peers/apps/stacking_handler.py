"""A function-form handler for TorchServe that stacks a batch into one forward pass (bench/batching.py).

Each request is one ``.npy`` array (or a JSON list of rows); the rows of a batch are concatenated, run
through the TorchScript model once, and split back by each request's rows; each answer is a ``.npy`` array.
It is what a TorchServe user writes to batch: TorchServe hands the handler the requests of a batch, the
stacking is the handler's job. Standard library, numpy and torch only: it runs inside TorchServe's worker.
"""

import io
import json
import os

import numpy as np
import torch

_model = None


def _rows(body):
    if isinstance(body, (bytes, bytearray)) and bytes(body[:6]) == b"\x93NUMPY":
        return np.load(io.BytesIO(bytes(body)), allow_pickle=False)
    rows = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
    return np.asarray(rows, dtype=np.float32)


def handle(data, context):
    global _model
    if data is None:
        model_dir = context.system_properties["model_dir"]
        _model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
        return None
    arrays = []
    for request in data:
        body = request.get("body")
        if body is None:
            body = request.get("data")
        arrays.append(_rows(body).astype(np.float32, copy=False))
    with torch.inference_mode():
        out = _model(torch.from_numpy(np.concatenate(arrays))).numpy()
    answers, start = [], 0
    for idx, rows in enumerate(arrays):
        buffer = io.BytesIO()
        np.save(buffer, out[start : start + len(rows)], allow_pickle=False)
        start += len(rows)
        answers.append(buffer.getvalue())
        context.set_response_content_type(idx, "application/x-npy")
    return answers
