"""A model directory turned into a model, and one request run through it.

Pure torch: no HTTP, no MMS. ``load`` reads the directory MMS hands over;
``Model.decode``/``predict``/``encode`` are the three stages of a request,
each the user's hook from ``code/inference.py`` when it defines one, else the
default that matches the SageMaker PyTorch serving container.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from handler import codecs
from handler.user_code import SCRIPT, Hook, find_hooks, import_script
from torch_mme.errors import (
    BadRequest,
    ModelLoadError,
    OutOfMemory,
    PredictionError,
    ServingError,
    brief,
    is_out_of_memory,
    toolkit_status_error,
)

log = logging.getLogger(__name__)

TORCHSCRIPT = "model.pt"
ARTIFACT_SUFFIXES = (".pt", ".pth")
UNSAFE_PICKLE_HINT = (
    "set TORCH_MME_ALLOW_UNSAFE_PICKLE=true (or `torch-mme serve --allow-unsafe-pickle`) if you trust this file, "
    "or save a TorchScript model.pt, or a state_dict plus a model_fn that builds the module"
)
# torch's wording when the input's shape or dtype does not fit the model: the client's error (400), not ours
_INPUT_MARKERS = (
    "shape",
    "size mismatch",
    "must match the size",
    "dimension",
    "cannot be multiplied",
    "Expected input",
    "same dtype",
    "expected scalar type",
    "is missing value for argument",  # TorchScript: fewer inputs (.npz arrays) than forward() takes
    "argument(s) but received",  # TorchScript: more inputs than forward() takes
    "positional argument",  # Python forward(): TypeError for too few or too many inputs
    "need to be at least 1D",  # a 0-d input (a bare number) to a Linear
)


@dataclass
class Model:
    """A loaded model and the hooks that serve it."""

    module: Any
    device: torch.device
    hooks: dict[str, Hook] = field(default_factory=dict)
    default_accept: str = codecs.JSON
    input_dtype: torch.dtype | None = None
    """Floating inputs are cast to the model's float dtype (numpy's float64 into a float32 model)."""
    max_decoded_bytes: int | None = None
    """What one body may decode to (``Settings.max_decoded_bytes``), passed to the default decoders."""
    input_spec: tuple[tuple[tuple[int, ...], torch.dtype], ...] | None = None
    """The shape and dtype of each input ``forward`` takes, when the module says (``input_spec``) and the default
    path's first-call warm-up may run it (``load``'s ``describe_input``); None otherwise."""

    def decode(self, body: bytes, content_type: str, context: Any = None) -> Any:
        """Request body -> model input (``input_fn``); any failure is the client's (400)."""
        hook = self.hooks.get("input_fn")
        if hook is None:
            decoded = codecs.decode(body, content_type, self.max_decoded_bytes)
            return _to_tensors(decoded, self.device, self.input_dtype)
        with _failures(
            "in input_fn",
            lambda exc: toolkit_status_error(exc) or BadRequest(f"input_fn rejected the body: {brief(exc)}"),
        ):
            return hook(user_body(body, content_type), content_type, context=context)

    def predict(self, data: Any, context: Any = None) -> Any:
        """Model input -> prediction: the user's ``predict_fn`` as it is (it may use autograd), or the
        default, the module called under ``torch.no_grad()`` (the toolkit's ``default_predict_fn``)."""
        hook = self.hooks.get("predict_fn")
        with _failures("in the model", _prediction_error):
            if hook is not None:
                return hook(data, self.module, context=context)
            with torch.no_grad():
                return _call(self.module, data)

    def encode(self, prediction: Any, accept: str, context: Any = None) -> tuple[bytes, str]:
        """Prediction -> (body, content type) (``output_fn``)."""
        hook = self.hooks.get("output_fn")
        if hook is None:
            return codecs.encode(prediction, accept, self.default_accept)
        with _failures("in output_fn", lambda exc: _prediction_error(exc, "output_fn")):
            return _body_and_type(hook(prediction, self.user_accept(accept), context=context), self.user_accept(accept))

    def transform(self, body: bytes, content_type: str, accept: str, context: Any = None) -> tuple[bytes, str]:
        """The whole request through the user's ``transform_fn``, called as it is (no grad mode set)."""
        hook = self.hooks["transform_fn"]
        with _failures("in transform_fn", lambda exc: _prediction_error(exc, "transform_fn")):
            result = hook(
                self.module, user_body(body, content_type), content_type, self.user_accept(accept), context=context
            )
        return _body_and_type(result, self.user_accept(accept))

    def user_accept(self, accept: str) -> str:
        """What the user's hooks see as Accept: the default for a missing or ``*/*`` header, as SageMaker does."""
        return self.default_accept if not accept or accept.strip() == codecs.ANY else accept


def user_body(body: bytes, content_type: str | None) -> bytes | str:
    """What ``input_fn``/``transform_fn`` receive: ``str`` for JSON and CSV (the toolkit's ``UTF8_TYPES``,
    decoded as UTF-8 before the hook), the body's bytes for every other type."""
    if codecs.media_type(content_type) not in codecs.UTF8_TYPES:
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"a {codecs.media_type(content_type)} body must be UTF-8 text: {exc}") from None


def load(
    model_dir: str,
    device: torch.device,
    allow_unsafe_pickle: bool = False,
    context: Any = None,
    default_accept: str = codecs.JSON,
    program: str = SCRIPT,
    describe_input: bool = True,
) -> Model:
    """Load a SageMaker PyTorch model directory (see the README for the layouts).

    The order is the toolkit's ``Transformer.validate_and_initialize``: ``pre_model_fn(model_dir)``, then
    ``model_fn(model_dir)`` (or the default loader), then ``model_warmup_fn(model_dir, model)``; each once.

    With ``describe_input``, a TorchScript module on the CPU that the default path calls (no ``predict_fn``,
    ``transform_fn`` or ``model_warmup_fn``) gets its ``input_spec`` for the handler's first-call warm-up.
    Found here, not in the handler, so that the template's own warm-up load (``warm_up_torchscript``) does it
    once before it forks: the lazy set-up of TorchScript's graph API and of zipfile then costs a model's
    process ~0.5 MB of private memory instead of ~2 MB.
    """
    if not os.path.isdir(model_dir):
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    hooks = find_hooks(import_script(model_dir, program))
    pre_model_fn = hooks.pop("pre_model_fn", None)
    model_fn = hooks.pop("model_fn", None)
    warmup_fn = hooks.pop("model_warmup_fn", None)
    if pre_model_fn is not None:
        _run_load_hook("pre_model_fn", pre_model_fn, (model_dir,), context)
    artifact = None
    if model_fn is not None:
        module = _run_load_hook("model_fn", model_fn, (model_dir,), context)
    else:
        module = _load_artifact(model_dir, device, allow_unsafe_pickle)
        if isinstance(module, torch.jit.ScriptModule):
            artifact = find_artifact(model_dir)
    if isinstance(module, torch.nn.Module) or hasattr(module, "eval"):
        module.eval()
    if warmup_fn is not None:
        _run_load_hook("model_warmup_fn", warmup_fn, (model_dir, module), context)
    spec = None
    if (
        describe_input
        and warmup_fn is None
        and device.type == "cpu"
        and not {"predict_fn", "transform_fn"} & set(hooks)
    ):
        spec = input_spec(module, artifact)
    return Model(
        module=module,
        device=device,
        hooks=hooks,
        default_accept=default_accept,
        input_dtype=_float_dtype(module),
        input_spec=spec,
    )


def input_spec(module: Any, artifact: str | None = None) -> tuple[tuple[tuple[int, ...], torch.dtype], ...] | None:
    """The shape and dtype of each input a TorchScript module's ``forward`` takes, when the module says; else None.

    Two sources, both read from the model, neither guessed:

    - a traced archive's own record of the example ``torch.jit.trace`` ran (``traced_inputs.pkl`` in
      ``artifact``: each input's shape and dtype; torch >= 2.0 writes it by default, ``torch.jit.load`` does
      not read it back);
    - else the forward's one tensor argument going straight into a ``Linear`` (``aten::linear`` of a weight
      parameter, through submodule calls): one row of ``in_features`` in the weight's dtype.
    """
    if not isinstance(module, torch.jit.ScriptModule):
        return None
    shapes = _traced_inputs(artifact) if artifact else None
    if shapes is None:
        try:
            row = _first_linear_row(module)
        except Exception as exc:  # a graph this reading does not expect: no warm-up, never a failed load
            log.debug("the forward's input is not described: %s", exc)
            row = None
        shapes = [row] if row is not None else None
    return tuple(shapes) if shapes else None


def sample_input(model: Model) -> tuple[torch.Tensor, ...] | None:
    """Zeros as ``model.input_spec`` describes, on the model's device: the profiling executor records shapes and
    dtypes, not values (and 0 is a valid index)."""
    if model.input_spec is None:
        return None
    return tuple(torch.zeros(shape, dtype=dtype, device=model.device) for shape, dtype in model.input_spec)


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MAX_SAMPLE_ELEMENTS = 2**22
"""A recorded example larger than this (16 MiB of float32) is not rebuilt at load."""


class _ShapesOnly(pickle.Unpickler):
    """Reads ``traced_inputs.pkl`` as (shape, dtype) pairs: the tensors' data is never read, and no global but
    the few that file names (a tensor, its storage's type, the type tag) is resolved."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, *rest: (tuple(size), storage)
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, type_tag: value
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a traced input")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype):
            return pid[1]
        raise pickle.UnpicklingError("not a tensor storage")


def _traced_inputs(path: str) -> list[tuple[tuple[int, ...], torch.dtype]] | None:
    """The (shape, dtype) of each positional input of ``forward`` recorded in a traced archive, or None."""
    import zipfile  # imported by torch already

    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.split("/", 1)[-1] == "traced_inputs.pkl"), None)
            if name is None or archive.getinfo(name).file_size > 2**20:
                return None
            with archive.open(name) as f:
                recorded = _ShapesOnly(f).load()
    except Exception as exc:  # an optimisation only: no sample, the first request pays as before
        log.debug("no traced inputs read from %s: %s", path, exc)
        return None
    inputs = recorded.get("forward") if isinstance(recorded, dict) else None
    if not isinstance(inputs, list) or not inputs:
        return None
    shapes = []
    for item in inputs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.dtype)):
            return None  # a nested tuple, list or dict of tensors: not rebuilt
        shape, dtype = item
        if not all(isinstance(d, int) and d >= 0 for d in shape) or _elements(shape) > MAX_SAMPLE_ELEMENTS:
            return None
        shapes.append((shape, dtype))
    return shapes


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _first_linear_row(module: Any, depth: int = 0) -> tuple[tuple[int, ...], torch.dtype] | None:
    """``((1, in_features), dtype)`` when ``module.forward``'s one tensor argument is first used by a ``Linear``
    (``aten::linear`` of a parameter, directly or through a submodule's ``forward``); None otherwise."""
    try:
        graph = module.forward.graph
    except Exception:  # an interface or a module without forward
        return None
    inputs = list(graph.inputs())
    if depth > 16 or len(inputs) != 2 or not isinstance(inputs[1].type(), torch._C.TensorType):
        return None
    this, x = inputs[0].unique(), inputs[1].unique()
    for node in graph.nodes():
        args = [v.unique() for v in node.inputs()]
        if x not in args:
            continue
        if node.kind() == "aten::linear" and args[0] == x:
            weight = _attribute(module, node.inputsAt(1), this)
            if isinstance(weight, torch.Tensor) and weight.dim() == 2:
                return (1, weight.shape[1]), weight.dtype
        elif node.kind() == "prim::CallMethod" and node.s("name") == "forward" and args[1:] == [x]:
            sub = _attribute(module, node.inputsAt(0), this)
            if sub is not None:
                return _first_linear_row(sub, depth + 1)
        return None  # the first use is anything else
    return None


def _attribute(module: Any, value: Any, this: int) -> Any:
    """What a chain of ``prim::GetAttr`` from ``self`` (``this``) names in ``module``, or None."""
    names = []
    while value.node().kind() == "prim::GetAttr":
        names.append(value.node().s("name"))
        value = value.node().inputsAt(0)
    if value.unique() != this:
        return None
    try:
        for name in reversed(names):
            module = getattr(module, name)
    except AttributeError:
        return None
    return module


def _float_dtype(module: Any) -> torch.dtype | None:
    """The dtype of the module's first floating parameter, if it has one."""
    try:
        return next((p.dtype for p in module.parameters() if p.dtype.is_floating_point), None)
    except Exception:  # not a module, or a ScriptModule without parameters()
        return None


def _run_load_hook(name: str, hook: Hook, args: tuple[Any, ...], context: Any) -> Any:
    with _failures(f"in {name}", lambda exc: ModelLoadError(f"{name} failed: {brief(exc)}")):
        return hook(*args, context=context)


@contextlib.contextmanager
def _failures(where: str, otherwise: Callable[[Exception], ServingError | None]) -> Iterator[None]:
    """Translate what fails in the block (torch's or the user's code) into the error its client is answered
    with: our own errors pass as they are, out-of-memory is a 507 saying ``where`` (``"in model_fn"``,
    ``"loading model.pt"``), anything else ``otherwise(exc)``; ``None`` from it lets ``exc`` through unchanged,
    for the caller to handle."""
    try:
        yield
    except ServingError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise OutOfMemory(f"out of memory {where}: {brief(exc)}") from exc
        translated = otherwise(exc)
        if translated is None:
            raise
        raise translated from exc


def find_artifact(model_dir: str) -> str | None:
    """The file the default ``model_fn`` loads, as the PyTorch toolkit's ``default_model_fn`` finds it:
    ``model.pt``, else the one ``*.pt``/``*.pth`` file of any name (``traced_resnet18.pt``); None for none.
    Several candidates and no ``model.pt`` fail, as there."""
    if os.path.isfile(os.path.join(model_dir, TORCHSCRIPT)):
        return os.path.join(model_dir, TORCHSCRIPT)
    candidates = sorted(
        name
        for name in os.listdir(model_dir)
        if os.path.splitext(name)[1] in ARTIFACT_SUFFIXES and os.path.isfile(os.path.join(model_dir, name))
    )
    if len(candidates) > 1:
        raise ModelLoadError(
            f"exactly one .pt or .pth file is required without model_fn (or a {TORCHSCRIPT}); found {candidates}"
        )
    return os.path.join(model_dir, candidates[0]) if candidates else None


def _load_artifact(model_dir: str, device: torch.device, allow_unsafe_pickle: bool) -> Any:
    path = find_artifact(model_dir)
    if path is None:
        raise ModelLoadError(
            f"no {TORCHSCRIPT} or model.pth (or another single .pt/.pth file) in {model_dir}, "
            f"and no model_fn in code/{SCRIPT}"
        )
    name = os.path.basename(path)
    zipped = _is_zip(path)
    if name.endswith(".pth") and not zipped:  # the legacy (pre-1.6) torch.save format: never TorchScript
        return _load_pickled(path, device, allow_unsafe_pickle)
    try:
        with _failures(
            f"loading {name}",
            lambda exc: None if zipped else ModelLoadError(f"{name} is not a TorchScript archive ({brief(exc)})"),
        ):
            return torch.jit.load(path, map_location=device)
    except ServingError:
        raise
    except Exception:  # a zip archive TorchScript cannot read: torch.save's format
        log.info("%s is not TorchScript; reading it as torch.save weights", name)
    return _load_pickled(path, device, allow_unsafe_pickle)


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _load_pickled(path: str, device: torch.device, allow_unsafe_pickle: bool) -> Any:
    name = os.path.basename(path)
    try:
        with _failures(
            f"loading {name}",
            # a global weights_only refuses is a pickled object, not a damaged file: handled below
            lambda exc: None if _refused_global(exc) else ModelLoadError(f"{name} cannot be read: {brief(exc)}"),
        ):
            obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_unsafe_pickle:
            raise ModelLoadError(
                f"{name} is a pickled object that weights_only loading refuses; {UNSAFE_PICKLE_HINT}"
            ) from exc
        log.warning("loading %s with weights_only=False (TORCH_MME_ALLOW_UNSAFE_PICKLE is set)", name)
        obj = _unsafe_load(path, device)
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{name} holds a state_dict; define model_fn in code/{SCRIPT} to build the module and load it"
        )
    if not callable(obj):
        raise ModelLoadError(f"{name} holds a {type(obj).__name__}, not a module")
    return obj


def _refused_global(exc: Exception) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc)


def _unsafe_load(path: str, device: torch.device) -> Any:
    name = os.path.basename(path)
    with _failures(f"loading {name}", lambda exc: ModelLoadError(f"{name} cannot be unpickled: {brief(exc)}")):
        return torch.load(path, map_location=device, weights_only=False)


def _to_tensors(decoded: Any, device: torch.device, float_dtype: torch.dtype | None) -> Any:
    if isinstance(decoded, dict):
        return {k: _to_tensors(v, device, float_dtype) for k, v in decoded.items()}
    tensor = torch.from_numpy(decoded)
    if float_dtype is not None and tensor.dtype.is_floating_point and tensor.dtype != float_dtype:
        tensor = tensor.to(float_dtype)
    return tensor.to(device)


def _call(module: Any, data: Any) -> Any:
    if isinstance(data, dict):
        return module(*data.values())  # .npz arrays in file order are the positional inputs
    return module(data)


def _prediction_error(exc: Exception, where: str = "the model") -> ServingError:
    """A failure of the model or of the user's predict/output code (out-of-memory is ``_failures``'): the
    user's own status, a 400 when torch says the input does not fit, else 500."""
    user_status = toolkit_status_error(exc)
    if user_status is not None:
        return user_status
    if isinstance(exc, (RuntimeError, ValueError, IndexError, TypeError)) and any(
        m in str(exc) for m in _INPUT_MARKERS
    ):
        return BadRequest(f"input does not fit the model: {brief(exc, with_type=False)}")
    return PredictionError(f"{where} failed: {brief(exc)}")


def _body_and_type(result: Any, accept: str) -> tuple[bytes, str]:
    """A user hook's answer as (bytes, content type): bytes or str (typed as Accept), (body, type), or arrays."""
    content_type = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result, content_type = result
    if isinstance(result, str):
        result = result.encode()
    if isinstance(result, (bytes, bytearray)):
        return bytes(result), content_type or accept.split(",", 1)[0].split(";", 1)[0].strip()
    body, kind = codecs.encode(result, accept)
    return body, content_type or kind
