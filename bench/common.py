"""What the benchmarks share: the tiny model and its request body (tests/support/models.py), percentiles, and the
results' metadata (bench/report.py writes it as each report's header).

Every benchmark writes ``<name>.json`` (all numbers) and ``<name>.md`` (a short
summary) with the same header: date, commit, size, machine and versions.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from handler import model as handler_model
from tests.support import tail  # noqa: F401 - for every benchmark
from tests.support.models import FEATURES, JSON_TYPE, OUTPUTS, request_body, write_model  # noqa: F401 - for every benchmark

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONED = ("torch", "numpy", "multi-model-server", "sagemaker-inference", "aiohttp")


def summarize(samples_s: list[float], scale: float, unit: str) -> dict[str, Any]:
    """p50/p90/p99/mean/min/max of ``samples_s`` (seconds) in ``unit`` (``scale`` units per second)."""
    values = np.asarray(samples_s) * scale
    return {
        "unit": unit,
        "n": int(values.size),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that shape the numbers."""
    found = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def git_commit() -> tuple[str, bool | None]:
    """(short commit, whether tracked files other than the results differ from it); ("unknown", None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return "unknown", None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages, None where the platform has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine() -> dict[str, Any]:
    """CPU count, platform string, CPU model and load average of this machine."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "loadavg_start": loadavg(),
    }


def new_result(benchmark: str, quick: bool) -> dict[str, Any]:
    """The metadata every result starts with: name, size, date, commit, machine and versions."""
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "quick": quick,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    result["git_commit"], result["git_dirty"] = git_commit()
    result["machine"] = machine()
    result["versions"] = versions()
    return result


def finish(result: dict[str, Any], began: float) -> None:
    """Record the load average at the end and the wall time since ``began`` (``time.perf_counter``)."""
    result["machine"]["loadavg_end"] = loadavg()
    result["wall_s"] = time.perf_counter() - began


def write_results(result: dict[str, Any], text: str, out_dir: Path) -> None:
    """``<benchmark>.json`` (all numbers) and ``<benchmark>.md`` (``text``) in ``out_dir``; prints ``text``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["benchmark"]
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(text)
    print(text)


def time_inproc(model: handler_model.Model, body: bytes, calls: int) -> list[float]:
    """Per-call seconds of ``encode(predict(decode(body)))``, exactly the handler's default path."""
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        model.encode(model.predict(model.decode(body, JSON_TYPE)), JSON_TYPE)
        samples.append(clock() - start)
    return samples


def rotation(keys: list[str], chunk: int) -> list[str]:
    """The order of ``keys`` in chunk ``chunk``: rotated by one each chunk, so none is always first or last."""
    if not keys:
        return []
    shift = chunk % len(keys)
    return keys[shift:] + keys[:shift]
