"""Cold start and memory per model, with model processes forked from the template vs a fresh Python each.

The same run measures both modes side by side (``TORCH_MME_FORK_SERVER``
false, then true): LoadModel time of a tiny TorchScript model (p50/p99 over
N loads, each under a new name), the memory each additional loaded model adds
to the whole process tree of ``serve`` (USS, the issue's measure, and PSS,
which splits pages the template shares with its children fairly), and the
invoke latency of one loaded model (the fast path must not slow requests).
"""

from __future__ import annotations

import contextlib
import http.client
import statistics
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


ROUNDS = 20
"""Invoke latency is measured in rounds alternating between the two servers, so drift on this shared
machine falls on both alike (measured one after the other, the two p50s differed by up to 17%)."""


def interleaved_invokes(ports: dict[str, int], name: str, body: bytes, count: int) -> dict[str, list[list[float]]]:
    """``count`` invokes of ``name`` on each server, in ``ROUNDS`` rounds alternating between them (after 200
    each to warm up): the samples of each round, by server."""
    connections = {key: http.client.HTTPConnection("127.0.0.1", port, timeout=30) for key, port in ports.items()}

    def once(key: str) -> float:
        started = time.perf_counter()
        connections[key].request("POST", f"/models/{name}/invoke", body=body, headers={"Content-Type": JSON_TYPE})
        response = connections[key].getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"invoke answered {response.status}")
        return time.perf_counter() - started

    for key in connections:
        for _ in range(200):
            once(key)
    rounds: dict[str, list[list[float]]] = {key: [] for key in connections}
    for _ in range(ROUNDS):
        for key in connections:
            rounds[key].append([once(key) for _ in range(max(1, count // ROUNDS))])
    for connection in connections.values():
        connection.close()
    return rounds


def measure_mode(server: LocalServer, root: Path, sizes: Sizes) -> dict[str, Any]:
    """LoadModel times and memory of one server (the other one, if started, idle meanwhile)."""
    body = request_body()
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
    }


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("cold_start", quick)
    result["modes"] = {}
    with contextlib.ExitStack() as stack:
        ports = {}
        for label, flag in MODES:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cold-"))
            server = stack.enter_context(LocalServer(root, env={"TORCH_MME_FORK_SERVER": flag}))
            result["modes"][flag] = {"label": label, **measure_mode(server, Path(root), sizes)}
            ports[flag] = server.port
        rounds = interleaved_invokes(ports, "cold-0", request_body(), sizes.invokes)
    for flag, samples in rounds.items():
        result["modes"][flag]["invoke_ms"] = summarize([x for r in samples for x in r], 1000.0, "ms")
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(rounds["true"], rounds["false"], strict=True)]
    result["invoke_p50_ratio_of_rounds"] = statistics.median(ratios)
    finish(result, began)
    after = result["modes"]["true"]
    goals = {
        "LoadModel p50 <= 0.25 s": after["load_s"]["p50"] <= 0.25,
        "LoadModel p99 <= 0.5 s": after["load_s"]["p99"] <= 0.5,
        "USS per additional model <= 40 MiB": after["uss_per_model_mib"] <= 40,
        "invoke p50 within 5% of before (median of the rounds' ratios)": result["invoke_p50_ratio_of_rounds"] <= 1.05,
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
            "turns the template's pages into shared ones); invoke latency over one keep-alive connection to each "
            f"server, both running, in {ROUNDS} rounds alternating between them; after / before p50, median of the "
            f"rounds' ratios: {result['invoke_p50_ratio_of_rounds']:.3f}"
        ],
    )
