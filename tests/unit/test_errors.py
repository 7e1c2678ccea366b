"""The error vocabulary (status, type name, body) and out-of-memory detection."""

from __future__ import annotations

import json

import pytest
import torch

from torch_mme import errors
from torch_mme.endpoint.errors import ModelError, ModelNotReady, ValidationError
from torch_mme.errors import is_out_of_memory
from torch_mme.runtime.httpserver import error_response
from torch_mme.runtime.upstream import UnsafeRequest, UpstreamError, UpstreamTimeout


@pytest.mark.parametrize(
    ("cls", "status", "type_name"),
    [
        (errors.ServingError, 500, "ServingError"),
        (errors.BadRequest, 400, "BadRequest"),
        (errors.PayloadTooLarge, 413, "PayloadTooLarge"),
        (errors.InvalidModelConfig, 400, "InvalidModelConfig"),
        (errors.UnsupportedContentType, 415, "UnsupportedContentType"),
        (errors.NotAcceptable, 406, "NotAcceptable"),
        (errors.RequestTimeout, 408, "RequestTimeout"),
        (errors.ModelLoadError, 500, "ModelLoadError"),
        (errors.ModelNotFound, 404, "ModelNotFoundException"),  # MMS's own name: its answers carry it too
        (errors.ModelConflict, 409, "ConflictStatusException"),  # the same
        (errors.ModelOutsideRoot, 400, "ModelOutsideRoot"),
        (errors.OutOfMemory, 507, "OutOfMemory"),
        (errors.PredictionError, 500, "PredictionError"),
        (errors.TooManyConnections, 503, "TooManyConnections"),
        (errors.ModelServerTimeout, 504, "ModelServerTimeout"),
        (UnsafeRequest, 400, "BadRequest"),
        (UpstreamError, 502, "ModelServerUnavailable"),
        (UpstreamTimeout, 504, "ModelServerTimeout"),
    ],
)
def test_status_type_and_json_body(cls, status, type_name):
    error = cls("it went wrong")
    assert (error.status, error.type_name) == (status, type_name)
    assert json.loads(error.body()) == {"code": status, "type": type_name, "message": "it went wrong"}
    assert error_response(error).status == status and error_response(error).body == error.body()


def test_one_name_per_error():
    """The vocabulary: no two classes of the hierarchy answer with the same type name."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ServingError)]
    names = [c.type_name for c in classes if c is not errors.Relayed]
    assert len(names) == len(set(names)) and "InsufficientMemory" not in names


def test_a_long_message_is_cut_only_where_asked():
    error = errors.BadRequest("x" * 5000)
    assert len(json.loads(error.body())["message"]) == 5000
    assert json.loads(error.body(errors.MAX_MESSAGE))["message"] == "x" * (errors.MAX_MESSAGE - 3) + "..."


def test_a_relayed_error_keeps_the_status_and_type_it_was_given():
    error = errors.Relayed(400, "DependencyInstallError", "pip said no")
    assert json.loads(error.body()) == {"code": 400, "type": "DependencyInstallError", "message": "pip said no"}


def test_endpoint_errors_have_the_aws_shape():
    assert json.loads(ValidationError("no such target").body()) == {
        "__type": "ValidationError",
        "message": "no such target",
    }
    body = json.loads(ModelError(507, "no room", "ep").body())
    assert body["__type"] == "ModelError" and (body["OriginalStatusCode"], body["OriginalMessage"]) == (507, "no room")
    assert (ModelNotReady("wait").status, ModelNotReady("wait").type_name) == (429, "ModelNotReadyException")


def test_load_errors_are_model_load_errors():
    assert issubclass(errors.DependencyInstallError, errors.ModelLoadError)
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
