"""Memory of ``torch-mme serve``: USS per loaded model, and drift over load/unload cycles, in one run.

Memory is the unique set size (USS, what would be given back if the processes
exited) summed over the whole process tree of ``serve``: the aiohttp front,
MMS's Java, and per model an MMS Python server process plus the worker it forks.
Models are tiny scripted ``nn.Linear(16, 4)``, so what is measured is the
fixed cost of a model slot, not of its weights.

1. **per model**: after a warm-up load + invoke + unload, the tree's USS with
   no model loaded (the server's baseline); then models are loaded one by one
   (each its own directory and name), each invoked once, and the tree measured
   after a short settle. The increments are the cost of one more model; each
   model's own USS is split into its MMS server process (the child of Java)
   and its worker (that process's child).
2. **cycles**: on a fresh server, two models are loaded, invoked and unloaded
   (DELETE) again and again. The tree's USS after cycle 2 (Java's JIT and heap
   settle in the first cycles) is the baseline; the drift is the change at the
   last cycle, which should stay within 5%, with no process or unix socket
   left behind (counted over the tree).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from bench.common import (
    FEATURES,
    JSON_TYPE,
    OUTPUTS,
    finish,
    new_result,
    request_body,
    summarize,
    tail,
    write_model,
    write_results,
)
from bench.report import document, table
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

MIB = 2**20
DRIFT_GOAL = 0.05
WARMUP_NAME = "mem-warmup"
MODEL_PREFIX = "mem-model"
CYCLE_NAMES = ("mem-cycle-a", "mem-cycle-b")


@dataclass(frozen=True)
class Sizes:
    """How many models to stack, how many load/unload cycles, how often to sample USS, and the settle time."""

    models: int
    cycles: int
    sample_every: int
    settle_s: float


FULL = Sizes(models=8, cycles=100, sample_every=10, settle_s=0.5)
QUICK = Sizes(models=3, cycles=10, sample_every=2, settle_s=0.5)


def unix_sockets(tree: list[psutil.Process]) -> int:
    """Unix sockets held by the processes of ``tree``, summed."""
    count = 0
    for process in tree:
        with contextlib.suppress(psutil.Error):
            count += len(process.net_connections(kind="unix"))
    return count


def java_pid(server: LocalServer) -> int:
    """The pid of MMS's Java, the child of ``serve`` named ``java``."""
    for process in processes.tree(server.process.pid):
        with contextlib.suppress(psutil.Error):
            if process.name() == "java":
                return process.pid
    raise RuntimeError("no java process below torch-mme serve")


def java_heap(pid: int, collect: bool = False) -> dict[str, int] | None:
    """Java's heap, committed and used bytes (``jcmd GC.heap_info``), after a full GC (``GC.run``) if ``collect``.

    None where ``jcmd`` is missing or answers nothing readable: the heap figures are diagnostics only.
    """
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return None
    try:
        if collect:
            subprocess.run([jcmd, str(pid), "GC.run"], capture_output=True, timeout=60, check=True)
        info = subprocess.run([jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"total (\d+)K, used (\d+)K", info.stdout)
    return {"committed": int(found[1]) * 1024, "used": int(found[2]) * 1024} if found else None


def load(server: LocalServer, name: str, model_dir: Path) -> float:
    """LoadModel ``name``; returns the seconds until its 200, raises on anything else."""
    start = time.perf_counter()
    status, reply = server.load(name, str(model_dir))
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"LoadModel {name} answered {status}: {reply}")
    return elapsed


def invoke(server: LocalServer, name: str, body: bytes) -> None:
    """One invoke of ``name``; raises unless it answers 200."""
    status, _, data = server.invoke(name, body, JSON_TYPE, JSON_TYPE)
    if status != 200:
        raise RuntimeError(f"invoke {name} answered {status}: {data[:500]!r}")


def unload(server: LocalServer, name: str) -> float:
    """DELETE ``name``; returns the seconds it took; raises unless it answered 200 with the processes gone."""
    start = time.perf_counter()
    status = server.unload(name)
    elapsed = time.perf_counter() - start
    if status != 200:
        raise RuntimeError(f"DELETE /models/{name} answered {status}")
    left = processes.model_processes(server.process.pid, name)
    if left:
        raise RuntimeError(f"DELETE /models/{name} returned with {len(left)} of its processes still running")
    return elapsed


def model_split(server: LocalServer, name: str, java: int) -> dict[str, int]:
    """USS in bytes of ``name``'s MMS server process (parent: Java) and of its worker(s) (the server's children)."""
    found = processes.model_processes(server.process.pid, name)
    servers = [p for p in found if p.ppid() == java]
    workers = [p for p in found if p.ppid() != java]
    if len(servers) != 1 or not workers:
        raise RuntimeError(f"{name}: expected 1 MMS server process and its worker, found {len(found)} processes")
    return {"server_uss": processes.uss(servers), "worker_uss": processes.uss(workers), "workers": len(workers)}


def snapshot(server: LocalServer, java: int) -> dict[str, int]:
    """The tree's USS, and the parts of it in Java and in the front (``serve`` itself)."""
    tree = processes.tree(server.process.pid)
    return {
        "tree_uss": processes.uss(tree),
        "java_uss": processes.uss([p for p in tree if p.pid == java]),
        "front_uss": processes.uss([p for p in tree if p.pid == server.process.pid]),
    }


def measure_per_model(server: LocalServer, models_root: Path, body: bytes, sizes: Sizes) -> dict[str, Any]:
    """Baseline with no model (after a warm-up), then the tree's USS after each of ``sizes.models`` loads."""
    java = java_pid(server)
    load(server, WARMUP_NAME, models_root / WARMUP_NAME / "model")
    invoke(server, WARMUP_NAME, body)
    unload(server, WARMUP_NAME)
    time.sleep(sizes.settle_s)
    baseline = snapshot(server, java)
    print(f"  0 models: tree {baseline['tree_uss'] / MIB:.0f} MiB", file=sys.stderr)

    steps: list[dict[str, Any]] = []
    loaded: list[str] = []
    try:
        for i in range(1, sizes.models + 1):
            name = f"{MODEL_PREFIX}-{i}"
            load_s = load(server, name, models_root / name / "model")
            loaded.append(name)
            invoke(server, name, body)
            time.sleep(sizes.settle_s)
            step = {"models": i, "name": name, "load_ms": load_s * 1e3, **snapshot(server, java)}
            step.update(model_split(server, name, java))
            previous = steps[-1] if steps else baseline
            step["increment"] = step["tree_uss"] - previous["tree_uss"]
            step["java_delta"] = step["java_uss"] - previous["java_uss"]
            step["front_delta"] = step["front_uss"] - previous["front_uss"]
            steps.append(step)
            print(
                f"  {i} model(s): tree {step['tree_uss'] / MIB:.0f} MiB (+{step['increment'] / MIB:.1f}); {name}: "
                f"server {step['server_uss'] / MIB:.1f} + worker {step['worker_uss'] / MIB:.1f} MiB",
                file=sys.stderr,
            )
        status, _, reply = server.request("GET", f"/models/{loaded[0]}")
        reported = json.loads(reply).get("memory", {}).get("measuredUssBytes") if status == 200 else None
    finally:
        for name in loaded:
            unload(server, name)

    increments = [s["increment"] for s in steps]
    # With the fork template, the first model turns the template's private pages into pages it shares with the
    # model's processes: the tree's USS sum drops once. Each later increment is one more model's cost.
    additional = increments[1:] or increments
    return {
        "baseline": baseline,
        "steps": steps,
        "increments": increments,
        "increment_mean": statistics.fmean(additional),
        "increment_median": statistics.median(additional),
        "model_server_uss_median": statistics.median(s["server_uss"] for s in steps),
        "model_worker_uss_median": statistics.median(s["worker_uss"] for s in steps),
        "model_uss_median": statistics.median(s["server_uss"] + s["worker_uss"] for s in steps),
        "java_delta_mean": statistics.fmean(s["java_delta"] for s in steps),
        "front_delta_mean": statistics.fmean(s["front_delta"] for s in steps),
        "first_model_reported_uss": reported,
    }


def measure_cycles(server: LocalServer, models_root: Path, body: bytes, sizes: Sizes) -> dict[str, Any]:
    """``sizes.cycles`` times: load both cycle models, invoke both, DELETE both; sample the tree as it goes."""
    load_s: list[float] = []
    unload_s: list[float] = []
    cycle_s: list[float] = []
    samples: list[dict[str, Any]] = []
    java = java_pid(server)
    for cycle in range(1, sizes.cycles + 1):
        began = time.perf_counter()
        for name in CYCLE_NAMES:
            load_s.append(load(server, name, models_root / name / "model"))
            invoke(server, name, body)
        for name in CYCLE_NAMES:
            unload_s.append(unload(server, name))
        cycle_s.append(time.perf_counter() - began)
        if cycle == 2 or cycle % sizes.sample_every == 0 or cycle == sizes.cycles:
            time.sleep(sizes.settle_s)
            tree = processes.tree(server.process.pid)
            sample = {"cycle": cycle, **snapshot(server, java), "processes": len(tree)}
            sample["unix_sockets"] = unix_sockets(tree)
            samples.append(sample)
            print(
                f"  cycle {cycle}: tree {sample['tree_uss'] / MIB:.1f} MiB (Java {sample['java_uss'] / MIB:.1f}, "
                f"front {sample['front_uss'] / MIB:.1f}), {sample['processes']} processes, "
                f"{sample['unix_sockets']} unix sockets",
                file=sys.stderr,
            )

    baseline = next(s for s in samples if s["cycle"] == 2)
    final = samples[-1]
    # diagnostic, after all the figures above (jcmd starts Java's attach listener, one more unix socket):
    # does the growth survive a full GC of Java (a leak) or not (garbage not collected yet)?
    heap_before = java_heap(java)
    heap_after = java_heap(java, collect=True)
    time.sleep(sizes.settle_s)
    after_gc = None
    if heap_before is not None and heap_after is not None:
        after_gc = {**snapshot(server, java), "java_heap_before": heap_before, "java_heap_after": heap_after}
    drift = (final["tree_uss"] - baseline["tree_uss"]) / baseline["tree_uss"]
    load_ms, unload_ms = summarize(load_s, 1e3, "ms"), summarize(unload_s, 1e3, "ms")
    return {
        "baseline": baseline,
        "final": final,
        "samples": samples,
        "drift": drift,
        "drift_goal": DRIFT_GOAL,
        "drift_pass": drift <= DRIFT_GOAL,
        "after_full_gc": after_gc,
        "processes_pass": final["processes"] <= baseline["processes"],
        "unix_sockets_pass": final["unix_sockets"] <= baseline["unix_sockets"],
        "load_model": load_ms,
        "unload_model": unload_ms,
        "cycle": summarize(cycle_s, 1e3, "ms"),
    }


def mib(value: float) -> str:
    """Bytes as ``151.2 MiB``."""
    return f"{value / MIB:.1f} MiB"


def signed_mib(value: float) -> str:
    """Bytes as ``+8.4`` (MiB, signed)."""
    return f"{value / MIB:+.1f}"


def verdict(passed: bool) -> str:
    """PASS or FAIL, in bold."""
    return "**PASS**" if passed else "**FAIL**"


def markdown(result: dict[str, Any]) -> str:
    """The short human summary written next to the JSON."""
    per, cyc = result["per_model"], result["cycles"]
    base, first, final = per["baseline"], cyc["baseline"], cyc["final"]
    n_cycles = result["config"]["cycles"]
    steps = [["0 (after a warm-up load + unload)", mib(base["tree_uss"]), "", "", "", "", "", ""]]
    steps += [
        [
            s["models"],
            mib(s["tree_uss"]),
            signed_mib(s["increment"]),
            mib(s["server_uss"]),
            mib(s["worker_uss"]),
            signed_mib(s["java_delta"]),
            signed_mib(s["front_delta"]),
            f"{s['load_ms']:.0f} ms",
        ]
        for s in per["steps"]
    ]
    head = ["models loaded", "tree USS", "increment", "new model's MMS server", "new model's worker"]
    head += ["Java change", "front change", "LoadModel"]
    summary = [
        (
            f"server baseline, 0 models (front {mib(base['front_uss'])}, Java {mib(base['java_uss'])})",
            mib(base["tree_uss"]),
        ),
        ("**increment per additional model (2nd on), mean**", f"**{mib(per['increment_mean'])}**"),
        ("increment per additional model (2nd on), median", mib(per["increment_median"])),
        (
            "one model's own USS, median: MMS server + worker",
            f"{per['model_server_uss_median'] / MIB:.1f} + {per['model_worker_uss_median'] / MIB:.1f} "
            f"= {mib(per['model_uss_median'])}",
        ),
        (
            "Java / front change per model, mean",
            f"{signed_mib(per['java_delta_mean'])} / {signed_mib(per['front_delta_mean'])} MiB",
        ),
    ]
    if per["first_model_reported_uss"] is not None:
        summary.append(
            (
                f"`GET /models/{MODEL_PREFIX}-1` measuredUssBytes (its own processes)",
                mib(per["first_model_reported_uss"]),
            )
        )
    changes = [
        [
            "tree USS",
            mib(first["tree_uss"]),
            mib(final["tree_uss"]),
            f"{cyc['drift'] * 100:+.2f}%",
            f"<= +{cyc['drift_goal'] * 100:.0f}%",
            verdict(cyc["drift_pass"]),
        ]
    ]
    for label, key in (("of which Java", "java_uss"), ("of which front (`serve`)", "front_uss")):
        changes.append([label, mib(first[key]), mib(final[key]), f"{signed_mib(final[key] - first[key])} MiB", "", ""])
    for label, key in (
        ("processes in the tree (`serve` included)", "processes"),
        ("unix sockets in the tree", "unix_sockets"),
    ):
        change = f"{final[key] - first[key]:+d}"
        changes.append([label, first[key], final[key], change, "no extra", verdict(cyc[f"{key}_pass"])])
    gc, diagnostic = cyc["after_full_gc"], ""
    if gc is not None:
        before, after = gc["java_heap_before"], gc["java_heap_after"]
        diagnostic = (
            f"Diagnostic, after the figures above: a full GC of Java (`jcmd <pid> GC.run`) at the end brings the "
            f"tree to {mib(gc['tree_uss'])} ({(gc['tree_uss'] - first['tree_uss']) / first['tree_uss'] * 100:+.2f}% "
            f"vs. cycle 2) and Java to {mib(gc['java_uss'])}; Java heap used {before['used'] / MIB:.0f} -> "
            f"{after['used'] / MIB:.0f} MiB, committed {before['committed'] / MIB:.0f} -> "
            f"{after['committed'] / MIB:.0f} MiB. Growth that a GC gives back is garbage not yet collected, "
            "not a leak."
        )
    timings = [
        (label, cyc[key]["n"], *(f"{cyc[key][k]:.0f} ms" for k in ("mean", "p50", "max")))
        for label, key in (
            ("LoadModel (POST /models until 200)", "load_model"),
            ("DELETE /models/<name> (processes gone)", "unload_model"),
            ("whole cycle (2 loads, 2 invokes, 2 DELETEs)", "cycle"),
        )
    ]
    return document(
        "memory: USS per loaded model and over load/unload cycles (`torch-mme serve`)",
        result,
        f"## USS per additional loaded model (1 to {len(per['steps'])})",
        table(head, steps, "r" * len(head)),
        table(["summary", "value"], summary),
        f"## Load/unload cycles: {n_cycles} x (load 2 models, invoke both, DELETE both), fresh server",
        table(["after cycle", "2 (baseline)", str(final["cycle"]), "change", "goal", "result"], changes, "lrrrll"),
        diagnostic,
        "Tree USS by cycle (Java in brackets): "
        + ", ".join(f"{s['cycle']}: {s['tree_uss'] / MIB:.1f} ({s['java_uss'] / MIB:.1f})" for s in cyc["samples"])
        + " MiB.",
        table(["timing", "n", "mean", "p50", "max"], timings),
        facts=[
            f"model: scripted `nn.Linear({FEATURES}, {OUTPUTS})`, each invoked once after its LoadModel; memory is "
            "USS summed over the process tree of `serve` (aiohttp front, MMS's Java, per model an MMS server process "
            f"and 1 worker), measured {result['config']['settle_s']} s after the last request; 1 MiB = 2^20 bytes"
        ],
    )


def with_server(
    models_root: Path, log_path: Path, measure: Callable[..., dict[str, Any]], *args: Any
) -> dict[str, Any]:
    """Start a server, run ``measure(server, *args)``, stop the server whatever happens."""
    with open(log_path, "wb") as log:
        server = LocalServer(str(models_root), log=log)
        try:
            start = time.perf_counter()
            server.start()
            print(f"server up on {server.url} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            return measure(server, *args)
        except BaseException:
            log.flush()
            print(f"--- serve log (last lines) ---\n{tail(log_path)}", file=sys.stderr)
            raise
        finally:
            server.stop()


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Measure both parts in one run; write ``memory.json`` and ``.md`` to ``out_dir``; return the result."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("memory", quick)
    body = request_body()
    result["config"] = {**asdict(sizes), "body_bytes": len(body), "torch_threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory(prefix="torch-mme-bench-") as tmp:
        models_root = Path(tmp) / "models"
        names = [WARMUP_NAME, *(f"{MODEL_PREFIX}-{i}" for i in range(1, sizes.models + 1)), *CYCLE_NAMES]
        for seed, name in enumerate(names):
            write_model(models_root / name / "model", seed=seed)

        print(f"USS per model: warm-up, then 1 to {sizes.models} models", file=sys.stderr)
        result["per_model"] = with_server(
            models_root, Path(tmp) / "serve-per-model.log", measure_per_model, models_root, body, sizes
        )
        print(f"load/unload cycles: {sizes.cycles} x 2 models", file=sys.stderr)
        result["cycles"] = with_server(
            models_root, Path(tmp) / "serve-cycles.log", measure_cycles, models_root, body, sizes
        )

    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result
