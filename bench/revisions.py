"""This tree against another git revision, side by side in one run: invoke p50, LoadModel p50, throughput.

``python -m bench --only revisions --against REV`` exports REV with ``git
archive`` into a temporary folder and starts two ``torch-mme serve``: one from
this tree, one with that folder first on PYTHONPATH (its ``torch_mme`` and
``handler``, with this environment's packages). Both serve the same tiny
TorchScript model. The two are measured in alternating chunks (this tree,
REV, this tree, ...) so the machine's noise falls on both alike, and the
ratio this tree / REV is the figure to read. Then the tiny and the compute-bound
model of ``bench/peers`` at 1, 4 and 16 keep-alive clients (req/s and p50),
again alternating chunk by chunk.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    JSON_TYPE,
    REPO_ROOT,
    finish,
    new_result,
    request_body,
    rotation,
    summarize,
    write_model,
    write_results,
)
from bench.peers.client import raw_request, run_load
from bench.peers.models import KINDS, write_compute_model
from bench.report import document, table
from torch_mme.tools.local_server import LocalServer

CLIENTS = (1, 4, 16)


def export(revision: str, into: Path) -> str:
    """REV's files in ``into``; returns its full commit id."""
    commit = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", revision], check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = into / "rev.tar"
    subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "-o", str(archive), commit], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "src", filter="data")
    return commit


def _imported_from(src: Path) -> str:
    """Where a Python with ``src`` first on PYTHONPATH finds ``torch_mme`` (so REV's server runs REV's code)."""
    code = "import torch_mme, handler; print(torch_mme.__file__)"
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=src, capture_output=True, text=True, check=True)
    return done.stdout


def time_invokes(port: int, name: str, body: bytes, calls: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    try:
        for _ in range(calls):
            started = time.perf_counter()
            conn.request("POST", f"/models/{name}/invoke", body=body, headers={"Content-Type": JSON_TYPE})
            response = conn.getresponse()
            response.read()
            samples.append(time.perf_counter() - started)
            assert response.status == 200
    finally:
        conn.close()
    return samples


def time_load(server: LocalServer, name: str, model_dir: Path) -> float:
    started = time.perf_counter()
    status, answer = server.load(name, str(model_dir))
    took = time.perf_counter() - started
    assert status == 200, answer
    assert server.unload(name) == 200
    return took


def throughput(servers: dict[str, LocalServer], body: bytes, chunks: int, seconds: float) -> dict[str, Any]:
    """req/s and p50 of each kind at 1, 4 and 16 keep-alive clients, the sides alternating chunk by chunk."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        for clients in CLIENTS:
            done = {side: {"ok": 0, "errors": 0, "wall_s": 0.0, "latency_s": []} for side in servers}
            for chunk in range(chunks):
                for side in rotation(list(servers), chunk):
                    port = servers[side].port
                    load, wall = run_load(port, [raw_request(port, f"/models/{kind}/invoke", body)], clients, seconds)
                    d = done[side]
                    d["ok"], d["errors"], d["wall_s"] = d["ok"] + load.ok, d["errors"] + load.errors, d["wall_s"] + wall
                    d["latency_s"] += load.latency_s
            point = {
                side: {
                    "rps": d["ok"] / d["wall_s"],
                    "errors": d["errors"],
                    "p50_ms": summarize(d["latency_s"], 1e3, "ms")["p50"],
                }
                for side, d in done.items()
            }
            point["rps_ratio"] = point["tree"]["rps"] / point["rev"]["rps"]
            point["p50_ratio"] = point["tree"]["p50_ms"] / point["rev"]["p50_ms"]
            out.setdefault(kind, {})[str(clients)] = point
            print(f"revisions: {kind} at {clients} clients, tree / rev req/s {point['rps_ratio']:.3f}", file=sys.stderr)
    return out


def run(quick: bool = False, out_dir: str = "bench/results", against: str = "HEAD") -> dict[str, Any]:
    began = time.perf_counter()  # finish() measures with perf_counter
    result = new_result("revisions", quick)
    chunks, calls, loads = (3, 100, 3) if quick else (12, 400, 12)
    load_chunks, load_s = (2, 1.0) if quick else (6, 2.0)
    body = request_body()
    with tempfile.TemporaryDirectory(prefix="bench-revisions-") as tmp:
        tmp_path = Path(tmp)
        commit = export(against, tmp_path)
        src = tmp_path / "src"
        imports_from = _imported_from(src)
        assert imports_from.startswith(str(tmp_path)), f"the revision's server would import {imports_from}"
        models = tmp_path / "models"
        write_model(models / "tiny", seed=1)
        write_compute_model(models / "compute", seed=2)
        logs = {side: open(tmp_path / f"{side}.log", "wb") for side in ("tree", "rev")}  # noqa: SIM115
        servers = {
            "tree": LocalServer(str(models), log=logs["tree"]),
            "rev": LocalServer(str(models), env={"PYTHONPATH": str(src)}, log=logs["rev"], cwd=str(src)),
        }
        samples: dict[str, dict[str, list[float]]] = {side: {"invoke": [], "load": []} for side in servers}
        try:
            for server in servers.values():
                server.start()
                for kind in KINDS:
                    assert server.load(kind, str(models / kind))[0] == 200
                    time_invokes(server.port, kind, body, 50)  # warm-up
            for chunk in range(chunks):
                for side in rotation(list(servers), chunk):
                    server = servers[side]
                    samples[side]["invoke"] += time_invokes(server.port, "tiny", body, calls)
                    if chunk < loads:
                        samples[side]["load"].append(time_load(server, f"load-{chunk}", models / "tiny"))
            result["throughput"] = throughput(servers, body, load_chunks, load_s)
        finally:
            for server in servers.values():
                server.stop()
            for log in logs.values():
                log.close()
    result["against"] = {"revision": against, "commit": commit}
    for side in servers:
        result[side] = {
            "invoke_ms": summarize(samples[side]["invoke"], 1e3, "ms"),
            "load_s": summarize(samples[side]["load"], 1.0, "s"),
        }
    result["ratios"] = {
        "invoke_p50": result["tree"]["invoke_ms"]["p50"] / result["rev"]["invoke_ms"]["p50"],
        "load_p50": result["tree"]["load_s"]["p50"] / result["rev"]["load_s"]["p50"],
    }
    finish(result, began)
    write_results(result, _markdown(result), Path(out_dir))
    return result


def _markdown(result: dict[str, Any]) -> str:
    tree, rev, ratios = result["tree"], result["rev"], result["ratios"]
    figures = [
        [
            "invoke p50 (tiny model, keep-alive)",
            f"{tree['invoke_ms']['p50']:.3f} ms",
            f"{rev['invoke_ms']['p50']:.3f} ms",
            f"{ratios['invoke_p50']:.3f}",
        ],
        [
            "invoke p99",
            f"{tree['invoke_ms']['p99']:.3f} ms",
            f"{rev['invoke_ms']['p99']:.3f} ms",
            f"{tree['invoke_ms']['p99'] / rev['invoke_ms']['p99']:.3f}",
        ],
        [
            "LoadModel p50",
            f"{tree['load_s']['p50']:.3f} s",
            f"{rev['load_s']['p50']:.3f} s",
            f"{ratios['load_p50']:.3f}",
        ],
        [
            "samples",
            f"{tree['invoke_ms']['n']} invokes, {tree['load_s']['n']} loads",
            f"{rev['invoke_ms']['n']} invokes, {rev['load_s']['n']} loads",
            "",
        ],
    ]
    throughput: list[str] = []
    if "throughput" in result:
        rows = [
            [kind, clients, f"{p['tree']['rps']:.1f}", f"{p['rev']['rps']:.1f}", f"{p['rps_ratio']:.3f}"]
            + [f"{p['p50_ratio']:.3f}", f"{p['tree']['errors']} / {p['rev']['errors']}"]
            for kind, points in result["throughput"].items()
            for clients, p in points.items()
        ]
        throughput = [
            "Throughput at 1, 4 and 16 keep-alive clients (bench/peers' tiny and compute-bound models; "
            "asyncio raw-HTTP client), the two alternating chunk by chunk:",
            "",
            *table(
                ["model", "clients", "this tree req/s", "revision req/s", "ratio", "p50 ratio", "errors"], rows, "l" * 7
            ),
        ]
    return document(
        "This tree against another revision",
        result,
        f"Against: `{result['against']['revision']}` = {result['against']['commit'][:12]}, "
        "measured side by side in alternating chunks (bench/revisions.py).",
        table(["", "this tree", "revision", "ratio"], figures, "llll"),
        throughput,
    )
