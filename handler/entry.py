"""The MMS entry point, in the function form: ``handle(data, context)``.

MMS calls ``handle(None, context)`` once when a worker loads its model. In the
function form an exception there fails LoadModel (the class form would log it
and answer 200, leaving a model that fails on every request). MMS itself only
answers "Failed to start workers", so the reason is also written to a load
report that ``torch-mme serve`` returns to the client; out-of-memory is
re-raised as ``MemoryError``, which MMS answers with 507.
"""

from __future__ import annotations

import logging
from typing import Any

from handler.service import PyTorchHandler
from torch_mme import load_report
from torch_mme.errors import ModelLoadError, OutOfMemory, ServingError, brief, is_out_of_memory
from torch_mme.settings import Settings

log = logging.getLogger("handler")
# MMS's worker logs a "[METRICS]PredictionTime..." line for every request, which MMS's Java reads from the
# worker's output, parses and drops (its model metrics are off here); the front's /metrics has the time.
logging.getLogger("mms.service").setLevel(logging.WARNING)
_service = PyTorchHandler()


def handle(data: list[dict] | None, context: Any) -> list[bytes] | None:
    if data is not None:
        return _service.handle(data, context)
    try:
        _service.initialize(context)
    except BaseException as exc:
        error = _as_load_error(exc)
        log.error("LoadModel of %s failed (%d): %s", context.model_name, error.status, error, exc_info=exc)
        load_report.write(Settings.from_env().run_dir, context.model_name, error.status, error.type_name, str(error))
        if error.status == OutOfMemory.status:
            raise MemoryError(str(error)) from exc
        raise
    return None


def _as_load_error(exc: BaseException) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemory(f"out of memory while loading: {brief(exc)}")
    return ModelLoadError(brief(exc))
