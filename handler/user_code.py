"""The user's ``code/inference.py``: import it from the model's own folder, call its hooks.

The SageMaker PyTorch toolkit never finds ``inference.py`` in multi-model mode
(it looks in ``/opt/ml/models/code``). Here each model's ``code/`` folder is put
on its worker's ``sys.path`` (one model per worker process), so the script and
any helper modules beside it import as they do in single-model mode.

The script is ``SAGEMAKER_PROGRAM`` when set (what the SDK's ``entry_point=``
sets; ``mnist_1d.py`` or the module name ``mnist_1d``), as in the toolkit's
``Environment.module_name``; a model without that file uses ``inference.py``.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch_mme.errors import ModelLoadError, brief

HOOKS = ("pre_model_fn", "model_fn", "model_warmup_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
SCRIPT = "inference.py"


@dataclass(frozen=True)
class Hook:
    """A user function, remembering whether it takes the trailing ``context`` argument."""

    fn: Callable[..., Any]
    takes_context: bool

    def __call__(self, *args: Any, context: Any = None) -> Any:
        return self.fn(*args, context) if self.takes_context else self.fn(*args)


def _takes_context(fn: Callable[..., Any], base_arity: int) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > base_arity


_ARITY = {
    "pre_model_fn": 1,
    "model_fn": 1,
    "model_warmup_fn": 2,
    "input_fn": 2,
    "predict_fn": 2,
    "output_fn": 2,
    "transform_fn": 4,
}


def module_name(program: str = SCRIPT) -> str:
    """``'mnist_1d.py'`` -> ``'mnist_1d'``, as the toolkit's ``Environment._parse_module_name``."""
    program = program.strip() or SCRIPT
    return program[:-3] if program.endswith(".py") else program


def _relative_path(program: str) -> str:
    """The file of a program name under ``code/``: ``mnist_1d.py``, ``mnist_1d`` and ``pkg.mod`` all work."""
    return module_name(program).replace(".", "/") + ".py"


def script_path(model_dir: str, program: str = SCRIPT) -> str:
    """The user script of ``model_dir``: ``code/<program>`` when it exists, else ``code/inference.py``."""
    wanted = os.path.join(model_dir, "code", _relative_path(program))
    return wanted if os.path.isfile(wanted) else os.path.join(model_dir, "code", SCRIPT)


def import_script(model_dir: str, program: str = SCRIPT) -> ModuleType | None:
    """Import the model's ``code/<program>`` (or ``code/inference.py``); None when there is neither."""
    path = script_path(model_dir, program)
    if not os.path.isfile(path):
        return None
    relative = os.path.relpath(path, os.path.join(model_dir, "code"))
    name = relative[:-3].replace(os.sep, ".")
    code_dir = os.path.join(model_dir, "code")
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickles referring to classes in the script find them
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelLoadError(f"code/{relative} failed to import: {brief(exc)}") from exc
    return module


def find_hooks(module: ModuleType | None) -> dict[str, Hook]:
    """The SageMaker hooks the script defines, by name."""
    if module is None:
        return {}
    hooks = {}
    for name in HOOKS:
        fn = getattr(module, name, None)
        if callable(fn):
            hooks[name] = Hook(fn, _takes_context(fn, _ARITY[name]))
    if "transform_fn" in hooks and {"input_fn", "predict_fn", "output_fn"} & hooks.keys():
        script = os.path.basename(getattr(module, "__file__", None) or SCRIPT)
        raise ModelLoadError(
            f"code/{script} defines transform_fn and input_fn/predict_fn/output_fn; define one or the other"
        )
    return hooks
