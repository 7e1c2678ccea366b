"""Cold start and memory per model, with model processes forked from the template vs a fresh Python each.

The same run measures both modes side by side (``TORCH_MME_FORK_SERVER``
false, then true): LoadModel time of a tiny TorchScript model (p50/p99 over
N loads, each under a new name), the memory each additional loaded model adds
to the whole process tree of ``serve`` (USS, the issue's measure, and PSS,
which splits pages the template shares with its children fairly), and the
invoke latency of one loaded model (the fast path must not slow requests).
"""

from __future__ import annotations

import http.client
import tempfile
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    JSON_TYPE,
    finish,
    new_result,
    request_body,
    summarize,
    write_model,
    write_results,
)
from bench.report import document, goals_table, table
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

MB = 2**20
MODES = (("fresh Python per model (before)", "false"), ("forked from the template (after)", "true"))


@dataclass(frozen=True)
class Sizes:
    loads: int
    invokes: int
    settle_s: float


FULL = Sizes(loads=12, invokes=2000, settle_s=0.5)
QUICK = Sizes(loads=4, invokes=300, settle_s=0.3)


def tree_memory(pid: int) -> tuple[int, int]:
    """(USS, PSS) summed over serve and every process below it."""
    uss = pss = 0
    for process in processes.tree(pid):
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        uss += info.uss
        pss += info.pss
    return uss, pss


def invoke_latency(port: int, name: str, body: bytes, count: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    for i in range(count + 200):
        started = time.perf_counter()
        connection.request("POST", f"/models/{name}/invoke", body=body, headers={"Content-Type": JSON_TYPE})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"invoke answered {response.status}")
        if i >= 200:  # warm-up
            samples.append(time.perf_counter() - started)
    connection.close()
    return samples


def measure_mode(fork_server: str, root: Path, sizes: Sizes) -> dict[str, Any]:
    body = request_body()
    with LocalServer(str(root), env={"TORCH_MME_FORK_SERVER": fork_server}) as server:
        write_model(root / "warmup" / "model", seed=0)
        assert server.load("warmup", str(root / "warmup" / "model"))[0] == 200
        assert server.unload("warmup") == 200
        time.sleep(sizes.settle_s)
        base_uss, base_pss = tree_memory(server.process.pid)
        loads, uss, pss = [], [base_uss], [base_pss]
        for i in range(sizes.loads):
            name = f"cold-{i}"
            write_model(root / name / "model", seed=i)
            started = time.perf_counter()
            status, answer = server.load(name, str(root / name / "model"))
            loads.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"LoadModel {name} answered {status}: {answer}")
            assert server.invoke(name, body, JSON_TYPE)[0] == 200
            time.sleep(sizes.settle_s)
            tree_uss, tree_pss = tree_memory(server.process.pid)
            uss.append(tree_uss)
            pss.append(tree_pss)
        latency = invoke_latency(server.port, "cold-0", body, sizes.invokes)
    # the first fork turns the template's private pages into shared ones; count increments from the second model
    uss_steps = [(b - a) / MB for a, b in pairwise(uss[1:])]
    pss_steps = [(b - a) / MB for a, b in pairwise(pss[1:])]
    return {
        "load_s": summarize(loads, 1.0, "s"),
        "tree_uss_mib": [u / MB for u in uss],
        "tree_pss_mib": [p / MB for p in pss],
        "uss_per_model_mib": sorted(uss_steps)[len(uss_steps) // 2],
        "pss_per_model_mib": sorted(pss_steps)[len(pss_steps) // 2],
        "first_model_uss_mib": (uss[1] - uss[0]) / MB,
        "first_model_pss_mib": (pss[1] - pss[0]) / MB,
        "invoke_ms": summarize(latency, 1000.0, "ms"),
    }


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("cold_start", quick)
    result["modes"] = {}
    for label, flag in MODES:
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as root:
            result["modes"][flag] = {"label": label, **measure_mode(flag, Path(root), sizes)}
    finish(result, began)
    before, after = result["modes"]["false"], result["modes"]["true"]
    goals = {
        "LoadModel p50 <= 0.25 s": after["load_s"]["p50"] <= 0.25,
        "LoadModel p99 <= 0.5 s": after["load_s"]["p99"] <= 0.5,
        "USS per additional model <= 40 MiB": after["uss_per_model_mib"] <= 40,
        "invoke p50 within 5% of before": after["invoke_ms"]["p50"] <= before["invoke_ms"]["p50"] * 1.05,
    }
    result["goals"] = goals
    write_results(result, markdown(result), Path(out_dir))
    return result


def markdown(result: dict[str, Any]) -> str:
    sizes = QUICK if result["quick"] else FULL
    before, after = result["modes"]["false"], result["modes"]["true"]
    rows = [
        ("LoadModel p50", before["load_s"]["p50"], after["load_s"]["p50"], "s"),
        ("LoadModel p99", before["load_s"]["p99"], after["load_s"]["p99"], "s"),
        ("USS per additional model", before["uss_per_model_mib"], after["uss_per_model_mib"], "MiB"),
        ("PSS per additional model", before["pss_per_model_mib"], after["pss_per_model_mib"], "MiB"),
        ("tree USS, 0 models", before["tree_uss_mib"][0], after["tree_uss_mib"][0], "MiB"),
        ("tree PSS, 0 models", before["tree_pss_mib"][0], after["tree_pss_mib"][0], "MiB"),
        (f"tree PSS, {sizes.loads} models", before["tree_pss_mib"][-1], after["tree_pss_mib"][-1], "MiB"),
        ("invoke p50", before["invoke_ms"]["p50"], after["invoke_ms"]["p50"], "ms"),
        ("invoke p99", before["invoke_ms"]["p99"], after["invoke_ms"]["p99"], "ms"),
    ]
    return document(
        "cold start: model processes forked from the template vs a fresh Python each",
        result,
        table(
            ["measure", "before (fresh Python)", "after (template)", "after / before"],
            [(label, f"{b:.3f} {unit}", f"{a:.3f} {unit}", f"{a / b:.2f}x") for label, b, a, unit in rows],
        ),
        goals_table(result["goals"], "goal (issue 8)"),
        facts=[
            f"model: scripted `nn.Linear(16, 4)`; {sizes.loads} LoadModels per mode, each a new name; memory summed "
            "over the process tree of `serve`, 'per model' = median increment from the 2nd model on (the 1st fork "
            "turns the template's pages into shared ones); invoke latency over one keep-alive connection"
        ],
    )
