"""Reliability and security tier: attacks the running server (``pytest -m reliability``).

Every test starts the real ``torch-mme serve`` (MMS, template, workers) on a
free 127.0.0.1 port below 32768 and stops it by its process id. Figures
(requests tried, faults injected, answers lost, durations) are collected in
the session-wide :data:`FIGURES` and written to ``bench/results/reliability.{md,json}`` when
TORCH_MME_RECORD_RESULTS is set.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import descendants, write_script_model, write_torchscript  # noqa: F401
from tests.support.http import KeepAliveClient as Client  # noqa: F401 - the tests' HTTP client
from tests.support.http import json_error_problem
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
FIGURES: dict[str, dict[str, Any]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: attacks the running server (bad requests, hostile artifacts, faults, soak)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


def record(section: str, **values: Any) -> None:
    """Add figures for one test; written at the end of the session."""
    FIGURES.setdefault(section, {}).update(values)


@pytest.fixture(scope="session", autouse=True)
def _write_figures():
    started = time.monotonic()
    yield
    if not FIGURES or not os.environ.get("TORCH_MME_RECORD_RESULTS"):
        return  # recording the figures is opt-in, so a test run leaves the tree clean
    totals = {
        "requests": sum(int(v.get("requests", 0)) for v in FIGURES.values()),
        "faults_injected": sum(int(v.get("faults_injected", 0)) for v in FIGURES.values()),
        "answers_lost": sum(int(v.get("answers_lost", 0)) for v in FIGURES.values()),
        "session_s": round(time.monotonic() - started, 1),
    }
    payload = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "totals": totals,
        "tests": FIGURES,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    lines = [
        "# Reliability and security tier",
        "",
        "Written by `pytest -m reliability tests/reliability` (tests/reliability/conftest.py).",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        f"- requests sent: **{totals['requests']}**",
        f"- faults injected: **{totals['faults_injected']}**",
        f"- answers lost: **{totals['answers_lost']}**",
        f"- tier wall time: {totals['session_s']} s",
        "",
        "| test | figures |",
        "|---|---|",
    ]
    for name in sorted(FIGURES):
        figures = ", ".join(f"{k}={v}" for k, v in sorted(FIGURES[name].items()))
        lines.append(f"| {name} | {figures} |")
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")


def start_server(root: Path, log_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None):
    log = open(log_dir / "serve.log", "wb")  # noqa: SIM115 - closed by stop_server
    server = LocalServer(str(root), env=env, args=args, log=log)
    server.start()
    server._log_file = log  # type: ignore[attr-defined]
    return server


def stop_server(server: LocalServer) -> None:
    server.stop()
    server._log_file.close()  # type: ignore[attr-defined]


def worker_identity(server: LocalServer, name: str) -> tuple:
    """What changes when MMS restarts a model's worker: its workers' ids and start times, and the processes' pids."""
    status, _, body = server.request("GET", f"/models/{name}", timeout=30)
    assert status == 200, body
    details = json.loads(body)
    details = details[0] if isinstance(details, list) else details
    workers = tuple(sorted((str(w.get("id")), str(w.get("startTime"))) for w in details.get("workers", [])))
    pids = tuple(sorted(p.pid for p in processes.model_processes(server.process.pid, name)))
    return workers, pids


def assert_short_json_error(status: int, body: bytes) -> dict:
    problem = json_error_problem(status, body)
    assert problem is None, (status, problem, body[:300])
    return json.loads(body)
