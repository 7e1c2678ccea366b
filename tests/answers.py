"""Comparing answers of the same requests served two ways (batched and alone, through MMS and in-process)."""

from __future__ import annotations

import io
import json

import numpy as np


def decoded(kind: str, body: bytes) -> np.ndarray:
    if kind == "text/csv":
        return np.loadtxt(io.BytesIO(body), delimiter=",", ndmin=1)
    if kind == "application/x-npy":
        return np.load(io.BytesIO(body), allow_pickle=False)
    return np.asarray(json.loads(body))


def assert_same_answers(got: list, want: list) -> None:
    """Per answer (status, content type, body): the same status, type and error body; results equal to float32
    rounding (a batched matmul may round the last bit differently from one row alone)."""
    assert len(got) == len(want)
    for (status, kind, body), (status_, kind_, body_) in zip(got, want, strict=True):
        assert (status, kind) == (status_, kind_), (status, kind, body[:200])
        if status != 200:
            assert body == body_
        else:
            np.testing.assert_allclose(decoded(kind, body), decoded(kind_, body_), rtol=1e-5, atol=1e-6)
