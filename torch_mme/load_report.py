"""Where a worker leaves the reason of a failed load for ``torch-mme serve`` to answer with.

MMS answers every failed LoadModel with "Failed to start workers"; the worker
writes ``<run_dir>/load-errors/<model>.json`` first, and the front reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from torch_mme.errors import error_body

log = logging.getLogger(__name__)

FOLDER = "load-errors"


def path(run_dir: str, model_name: str) -> str:
    return os.path.join(run_dir, FOLDER, model_name.replace("/", "_") + ".json")


def write(run_dir: str, model_name: str, status: int, kind: str, message: str) -> None:
    """Record a failed load (no-op when not running under ``serve``, i.e. no run dir)."""
    if not run_dir:
        return
    target = path(run_dir, model_name)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + ".tmp", "wb") as f:
            f.write(error_body(status, kind, message))
        os.replace(target + ".tmp", target)
    except OSError:
        log.warning("could not write the load report %s", target, exc_info=True)


def take(run_dir: str, model_name: str) -> dict | None:
    """Read and remove the report of ``model_name``, if any."""
    target = path(run_dir, model_name)
    try:
        with open(target) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    discard(run_dir, model_name)
    return report if isinstance(report, dict) else None


def discard(run_dir: str, model_name: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path(run_dir, model_name))
