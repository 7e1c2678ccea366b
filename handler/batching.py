"""One forward pass for the items of a batch that fit together, and its output split back per item.

MMS hands the handler up to ``batch_size`` requests at once (a model's
``torch-mme.json``). Items whose decoded inputs are tensors of one dtype and
device with the same trailing shape are concatenated along the first (batch)
dimension and run once; the output is split back by each item's row count.
An output that cannot be split that way (its first dimension is not the
total of the rows) is not batch-aligned: those items run one by one, and the
model is not stacked again. Setting ``batch_size`` above 1 is the model
owner's word that the model treats rows independently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def key(data: Any) -> tuple | None:
    """What inputs must share to be stacked (None: this input runs on its own)."""
    if isinstance(data, torch.Tensor) and data.dim() >= 1 and data.shape[0] > 0:
        return (data.dtype, data.device, tuple(data.shape[1:]))
    return None


def groups(inputs: Sequence[Any]) -> list[list[int]]:
    """Indexes of ``inputs`` grouped by ``key``, in order of first appearance; unstackable ones alone."""
    grouped: dict[tuple, list[int]] = {}
    alone: list[list[int]] = []
    for index, data in enumerate(inputs):
        shared = key(data)
        if shared is None:
            alone.append([index])
        else:
            grouped.setdefault(shared, []).append(index)
    return [*grouped.values(), *alone]


def run_stacked(inputs: Sequence[torch.Tensor], predict: Callable[[torch.Tensor], Any]) -> list[Any] | None:
    """``predict`` on the concatenated inputs, split back per input; None when the output is not batch-aligned."""
    sizes = [int(t.shape[0]) for t in inputs]
    return split(predict(torch.cat(list(inputs))), sizes)


def split(output: Any, sizes: list[int]) -> list[Any] | None:
    """A batch output as one output per input of ``sizes`` rows (tensors, and tuples, lists or dicts of them)."""
    total = sum(sizes)
    if isinstance(output, torch.Tensor):
        if output.dim() == 0 or output.shape[0] != total:
            return None
        return list(output.split(sizes))
    if isinstance(output, (tuple, list)) and output:
        parts = [split(o, sizes) for o in output]
        if any(p is None for p in parts):
            return None
        return [type(output)(p[i] for p in parts) for i in range(len(sizes))]
    if isinstance(output, dict) and output:
        columns = {k: split(v, sizes) for k, v in output.items()}
        if any(c is None for c in columns.values()):
            return None
        return [{k: c[i] for k, c in columns.items()} for i in range(len(sizes))]
    return None
