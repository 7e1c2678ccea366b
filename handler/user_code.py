"""The user's ``code/inference.py``: import it from the model's own folder, call its hooks.

The SageMaker PyTorch toolkit never finds ``inference.py`` in multi-model mode
(it looks in ``/opt/ml/models/code``). Here each model's ``code/`` folder is put
on its worker's ``sys.path`` (one model per worker process), so the script and
any helper modules beside it import as they do in single-model mode.
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

from handler.errors import ModelLoadError, brief

HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")
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


_ARITY = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4}


def script_path(model_dir: str) -> str:
    return os.path.join(model_dir, "code", SCRIPT)


def import_script(model_dir: str, module_name: str = "inference") -> ModuleType | None:
    """Import ``<model_dir>/code/inference.py`` (None when there is none)."""
    path = script_path(model_dir)
    if not os.path.isfile(path):
        return None
    code_dir = os.path.dirname(path)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # pickles referring to classes in inference.py find them
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"code/{SCRIPT} failed to import: {brief(exc)}") from exc
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
        raise ModelLoadError(
            f"code/{SCRIPT} defines transform_fn and input_fn/predict_fn/output_fn; define one or the other"
        )
    return hooks
