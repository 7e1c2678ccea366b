"""A model's own serving settings: ``torch-mme.json`` beside its weights, validated before any worker starts.

SageMaker's LoadModel carries only a name and a url, so a model that needs
more than one worker, batching, a longer timeout or a warm-up says so in its
archive. The front reads this file at LoadModel (an unknown key or a bad
value answers 400 naming it) and passes what MMS runs to MMS's register
call; the handler reads it again in the worker for what runs there
(``torch_threads``, ``warmup``, ``auto_warmup``, ``batch_predict_fn``).

TorchServe's ``model-config.yaml`` names are accepted as aliases in the same
JSON (``batchSize``, ``maxBatchDelay``, ``minWorkers``, ``responseTimeout``),
so a model moved from TorchServe keeps its numbers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from torch_mme.common import is_inside
from torch_mme.errors import InvalidModelConfig

FILE = "torch-mme.json"
MAX_BYTES = 64 * 2**10
MAX_WARMUP = 16
ALIASES = {
    "batchSize": "batch_size",
    "maxBatchDelay": "max_batch_delay_ms",
    "minWorkers": "workers",
    "responseTimeout": "response_timeout_s",
}


@dataclass(frozen=True)
class WarmupRequest:
    body: bytes
    content_type: str
    accept: str = ""


@dataclass(frozen=True)
class ModelConfig:
    memory_mb: float | None = None
    """Memory one worker of this model needs (the owner's word wins over the estimate from the artifact)."""
    batch_size: int = 1
    """Requests MMS hands the handler at once (up to this many, waiting at most ``max_batch_delay_ms``)."""
    max_batch_delay_ms: int = 100
    workers: int | None = None
    """Worker processes (None: the server's ``SAGEMAKER_MODEL_SERVER_WORKERS``); each holds its own weights."""
    response_timeout_s: int | None = None
    """This model's response timeout (None: the server's)."""
    torch_threads: int | None = None
    """``torch.set_num_threads`` in this model's workers (None: torch's default in the worker, 1)."""
    warmup: tuple[WarmupRequest, ...] = field(default_factory=tuple)
    """Requests run once at load, through the same path as real ones, so the first real request is not slow."""
    batch_predict_fn: bool = False
    """A user's ``predict_fn`` receives the stacked batch (else it is called once per item)."""
    auto_warmup: bool = True
    """Without ``warmup``, run a TorchScript CPU model at load on zeros shaped as the model records its input
    (``PyTorchHandler._warm_up_first_call``); false for a model whose forward must not run before a request."""

    def register_parameters(self) -> dict[str, int]:
        """What MMS's register call takes from this config."""
        parameters = {"batch_size": self.batch_size, "max_batch_delay": self.max_batch_delay_ms}
        if self.workers is not None:
            parameters["initial_workers"] = self.workers
        if self.response_timeout_s is not None:
            parameters["response_timeout"] = self.response_timeout_s
        return parameters


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidModelConfig(f"{FILE}: {key} must be an integer from {low} to {high}, not {value!r}")
    return value


def _memory(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidModelConfig(f"{FILE}: memory_mb must be a number > 0, not {value!r}")
    return float(value)


def _warmup(value: Any, model_dir: str) -> tuple[WarmupRequest, ...]:
    if not isinstance(value, list) or len(value) > MAX_WARMUP:
        raise InvalidModelConfig(f"{FILE}: warmup must be a list of at most {MAX_WARMUP} requests")
    requests = []
    for position, item in enumerate(value):
        where = f"{FILE}: warmup[{position}]"
        if not isinstance(item, dict) or not set(item) <= {"body", "file", "content_type", "accept"}:
            raise InvalidModelConfig(f"{where} must be an object with body or file, content_type and accept")
        content_type = item.get("content_type", "application/json")
        accept = item.get("accept", "")
        if not isinstance(content_type, str) or not isinstance(accept, str):
            raise InvalidModelConfig(f"{where}: content_type and accept must be strings")
        if ("body" in item) == ("file" in item):
            raise InvalidModelConfig(f"{where} needs exactly one of body (JSON or text) or file (a path in the model)")
        if "body" in item:
            body = item["body"]
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        else:
            data = _read_inside(model_dir, item["file"], where)
        requests.append(WarmupRequest(data, content_type, accept))
    return tuple(requests)


def _read_inside(model_dir: str, relative: Any, where: str) -> bytes:
    if not isinstance(relative, str) or os.path.isabs(relative):
        raise InvalidModelConfig(f"{where}: file must be a path relative to the model folder")
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, relative))
    if not is_inside(path, root) or not os.path.isfile(path):
        raise InvalidModelConfig(f"{where}: file {relative!r} is not a file inside the model folder")
    if os.path.getsize(path) > 6 * 2**20:
        raise InvalidModelConfig(f"{where}: file {relative!r} is larger than 6 MiB")
    with open(path, "rb") as f:
        return f.read()


def read(model_dir: str) -> ModelConfig:
    """The model's config (defaults without a ``torch-mme.json``); InvalidModelConfig names what is wrong."""
    values = _load(model_dir)
    known = {
        "memory_mb": _memory,
        "batch_size": lambda v: _integer("batch_size", v, 1, 256),
        "max_batch_delay_ms": lambda v: _integer("max_batch_delay_ms", v, 0, 10_000),
        "workers": lambda v: _integer("workers", v, 1, 32),
        "response_timeout_s": lambda v: _integer("response_timeout_s", v, 1, 3600),
        "torch_threads": lambda v: _integer("torch_threads", v, 1, 256),
        "warmup": lambda v: _warmup(v, model_dir),
        "batch_predict_fn": lambda v: _boolean("batch_predict_fn", v),
        "auto_warmup": lambda v: _boolean("auto_warmup", v),
    }
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidModelConfig(f"{FILE}: unknown key(s) {unknown[:5]}; known keys are {sorted(known)}")
    return ModelConfig(**{key: known[key](value) for key, value in values.items()})


def memory_mb(model_dir: str) -> float | None:
    """The config's ``memory_mb`` alone (what admission needs, without reading the warm-up files), from the
    same reading of the file as ``read``; InvalidModelConfig when the file or the value is not valid."""
    value = _load(model_dir).get("memory_mb")
    return None if value is None else _memory(value)


def _load(model_dir: str) -> dict[str, Any]:
    """The one reader of ``torch-mme.json``: its keys (TorchServe's names mapped to ours) and raw values,
    ``{}`` without the file."""
    path = os.path.join(model_dir, FILE)
    if not os.path.lexists(path):
        return {}
    root = os.path.realpath(model_dir)
    real = os.path.realpath(path)
    if not is_inside(real, root) or not os.path.isfile(real):
        raise InvalidModelConfig(f"{FILE} must be a file inside the model folder")
    with open(real, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise InvalidModelConfig(f"{FILE} is larger than {MAX_BYTES // 1024} KiB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelConfig(f"{FILE} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise InvalidModelConfig(f"{FILE} must hold a JSON object")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name in values:
            raise InvalidModelConfig(f"{FILE}: {key} is given twice (as {name} and its alias)")
        values[name] = value
    return values


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidModelConfig(f"{FILE}: {key} must be true or false, not {value!r}")
    return value
