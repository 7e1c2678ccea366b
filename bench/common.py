"""What the benchmarks share: the tiny model and its request body, percentiles, and the results' header.

Every benchmark writes ``<name>.json`` (all numbers) and ``<name>.md`` (a short
summary) with the same header: date, commit, size, machine and versions.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handler import model as handler_model

JSON_TYPE = "application/json"
FEATURES, OUTPUTS = 16, 4
REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONED = ("torch", "numpy", "multi-model-server", "sagemaker-inference", "aiohttp")


def write_model(model_dir: Path, seed: int) -> torch.nn.Module:
    """A scripted ``nn.Linear(16, 4)`` saved as ``model_dir/model.pt``; returns the eager module."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(FEATURES, OUTPUTS).eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(model_dir / "model.pt"))
    return module


def request_body(seed: int = 123) -> bytes:
    """One row of 16 floats as a JSON body: ``[[x0, ..., x15]]``."""
    row = np.random.default_rng(seed).standard_normal(FEATURES).round(4).tolist()
    return json.dumps([row]).encode()


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


def header_lines(result: dict[str, Any]) -> list[str]:
    """The markdown bullets for date, commit, size, machine and versions."""
    m, v = result["machine"], result["versions"]
    size = "quick" if result["quick"] else "full"
    dirty = " (tracked files modified)" if result["git_dirty"] else ""
    start, end = m.get("loadavg_start"), m.get("loadavg_end")
    load = f"; load average {start[0]:.2f} -> {end[0]:.2f}" if start and end else ""
    return [
        f"- date (UTC): {result['date_utc']}; commit: `{result['git_commit']}`{dirty}; size: {size}",
        f"- machine: {m['cpu_model']}, {m['cpu_count']} CPUs, {m['platform']}{load}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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


_TRACEBACK = re.compile(rb'Traceback \(most recent call last\)|File \\?"[^"\n]*\\?", line \d+')
"""What a Python traceback prints (also JSON-escaped): its header, or a frame line."""


def json_error_problem(status: int, body: bytes) -> str | None:
    """Why ``body`` is not a short one-line JSON error for ``status`` (``{"code", "message"}``, no traceback)."""
    if len(body) >= 4096:
        return "longer than 4 kB"
    if _TRACEBACK.search(body):  # the words alone may be the client's own (a CSV cell 'Traceback', quoted back)
        return "carries a traceback"
    try:
        payload = json.loads(body)
    except ValueError:
        return "not JSON"
    if not isinstance(payload, dict) or payload.get("code") != status or not payload.get("message"):
        return "not {code, message} for this status"
    if "\n" in body.decode(errors="replace").strip():
        return "more than one line"
    return None


class KeepAliveClient:
    """A keep-alive HTTP/1.1 client (one connection), reconnecting after errors.

    A request whose connection the server closed is sent once more on a new one (a keep-alive connection
    closed while idle is normal); ``resent`` counts them, so a caller that must see every answer can check.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.resent = 0

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                chunked = body is not None and not isinstance(body, (bytes, bytearray))  # an iterable: chunked encoding
                self.conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                self.close()  # a keep-alive connection the server closed between requests: retry once
                if attempt:
                    raise
                self.resent += 1
            except Exception:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
