"""Typed errors and out-of-memory detection."""

from __future__ import annotations

import json

import pytest
import torch

from torch_mme import errors
from torch_mme.errors import is_out_of_memory


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.HandlerError, 500),
        (errors.BadRequest, 400),
        (errors.UnsupportedContentType, 415),
        (errors.NotAcceptable, 406),
        (errors.ModelLoadError, 500),
        (errors.ModelNotFound, 404),
        (errors.ModelOutsideRoot, 400),
        (errors.OutOfMemory, 507),
        (errors.PredictionError, 500),
    ],
)
def test_status_and_json_body(cls, status):
    error = cls("it went wrong")
    assert error.status == status
    assert json.loads(error.to_json()) == {"code": status, "type": cls.__name__, "message": "it went wrong"}


def test_load_errors_are_model_load_errors():
    assert issubclass(errors.ModelNotFound, errors.ModelLoadError)
    assert issubclass(errors.ModelOutsideRoot, errors.ModelLoadError)


class OutOfMemoryError(Exception):
    """Named like torch's CUDA OOM error, from another library."""


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        errors.OutOfMemory("no room"),
        OutOfMemoryError("whatever"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"
        ),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    ],
    ids=[
        "MemoryError",
        "OutOfMemory",
        "named-OutOfMemoryError",
        "torch-cuda-oom",
        "cpu-alloc",
        "cpu-not-enough",
        "cuda-text",
    ],
)
def test_is_out_of_memory_true(exc):
    assert is_out_of_memory(exc)


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (1x5 and 3x2)"),
        ValueError("DefaultCPUAllocator: can't allocate memory"),  # the marker only counts on a RuntimeError
        ZeroDivisionError("division by zero"),
        errors.BadRequest("out of memory?"),
        KeyError("memory"),
    ],
)
def test_is_out_of_memory_false(exc):
    assert not is_out_of_memory(exc)
