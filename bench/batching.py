"""Batching on a memory-bound model, TorchServe with the same batch settings, and the cost of metrics, in one run.

``python -m bench --only batching`` measures, side by side in alternating chunks (the order rotates per chunk):

1. a memory-bound model (``DEPTH`` x ``Linear(2048, 2048)`` + ReLU, float32, TorchScript: 64 MiB of weights,
   far more than the CPU caches, so a forward of one row is mostly reading the weights) loaded twice into
   one ``torch-mme serve``: a copy whose ``torch-mme.json`` says ``{"batch_size": 16, "max_batch_delay_ms": 5,
   "torch_threads": 1}`` and a copy with ``batch_size`` 1. Throughput (req/s) at 32 concurrent keep-alive
   clients, p50/p99 at 1 client. Requests and answers are ``.npy`` (one row of 2048 float32), so the codec
   costs little next to the forward;
2. TorchServe 0.12 (the peers' venv, ``bench/peers``) on the same ``model.pt``, registered with
   ``batch_size=16&max_batch_delay=5`` and with batch size 1, one thread (``OMP_NUM_THREADS=1``), with a
   function-form handler that stacks the batch into one forward (``bench/peers/apps/stacking_handler.py``);
3. the cost of metrics: invoke p50 of the tiny model (``bench/common.write_model``) through two
   ``torch-mme serve``, one with ``TORCH_MME_METRICS=false``, in many short rounds of one chunk on each (the
   order alternates per round); the figure is the median of the rounds' p50 ratios, with their spread, so a
   drift of the machine during the run (other work on its 2 cores) moves both sides of a round alike.

The load generator is ``bench/peers/client.py``'s asyncio raw-HTTP client, in this process: its CPU time
per chunk is recorded next to the servers' (over their process trees), so the report says whether the
client or the servers used the 2 cores. Goals: batch 16 / batch 1 throughput >= 4x; p50 at 1 client with
batch 16 <= batch-1 p50 + ``max_batch_delay_ms``; metrics on / off invoke p50 <= 1.03.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    JSON_TYPE,
    finish,
    new_result,
    request_body,
    rotation,
    summarize,
    tail,
    write_model,
    write_results,
)
from bench.peers import peerenv
from bench.peers.client import KeepAlive, run_load, timed
from bench.peers.servers import APPS, TorchServe
from bench.report import document, na, table
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

NPY = "application/x-npy"
WIDTH, DEPTH = 2048, 4
BATCH, DELAY_MS, CLIENTS = 16, 5, 32
THROUGHPUT_GOAL, METRICS_GOAL = 4.0, 1.03
MEMORY_CONFIG = {"batch_size": BATCH, "max_batch_delay_ms": DELAY_MS, "torch_threads": 1}
SINGLE_CONFIG = {"batch_size": 1, "torch_threads": 1}
LABELS = {
    "mme_b16": f"torch-mme, batch_size {BATCH}",
    "mme_b1": "torch-mme, batch_size 1",
    "ts_b16": f"TorchServe 0.12, batch_size {BATCH}",
    "ts_b1": "TorchServe 0.12, batch_size 1",
    "metrics_on": "torch-mme, metrics on",
    "metrics_off": "torch-mme, TORCH_MME_METRICS=false",
}


@dataclass(frozen=True)
class Sizes:
    """How much to measure: full about 4 minutes on 2 cores, quick about 1."""

    chunks: int
    chunk_s: float
    latency_calls: int
    metrics_rounds: int
    metrics_calls: int
    """Requests per side in each round of the metrics on/off comparison."""
    warm_s: float


FULL = Sizes(chunks=8, chunk_s=3.0, latency_calls=60, metrics_rounds=60, metrics_calls=80, warm_s=3.0)
QUICK = Sizes(chunks=2, chunk_s=1.5, latency_calls=20, metrics_rounds=8, metrics_calls=50, warm_s=1.0)


class MemoryBound(torch.nn.Module):
    """``DEPTH`` x (``Linear(WIDTH, WIDTH)`` + ReLU): a row in, a row out, 16 MiB of float32 weights per layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def write_memory_model(model_dir: Path, seed: int, config: dict[str, Any] | None) -> torch.nn.Module:
    """A scripted ``MemoryBound`` in ``model_dir/model.pt`` (``config`` as its ``torch-mme.json``); the module."""
    torch.manual_seed(seed)
    module = MemoryBound().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(model_dir / "model.pt"))
    if config is not None:
        (model_dir / "torch-mme.json").write_text(json.dumps(config) + "\n")
    return module


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def raw_request(port: int, path: str, body: bytes, content_type: str, accept: str) -> bytes:
    """The bytes of one keep-alive ``POST path`` with ``body``, its Content-Type and Accept."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(throughput: dict[str, float], p50_ms: dict[str, float], metrics_ratio: float | None) -> dict[str, Any]:
    """Each goal with its figure, its bound and whether it passes (None where the figure is missing)."""

    def check(value: float | None, bound: float | None, upper: bool) -> dict[str, Any]:
        passed = None if value is None or bound is None else (value <= bound if upper else value >= bound)
        return {"value": value, "bound": bound, "pass": passed}

    b16, b1 = p50_ms.get("mme_b16"), p50_ms.get("mme_b1")
    return {
        "throughput_ratio": check(ratio(throughput.get("mme_b16"), throughput.get("mme_b1")), THROUGHPUT_GOAL, False),
        "p50_at_1_client_ms": check(b16, b1 + DELAY_MS if b1 is not None else None, True),
        "metrics_p50_ratio": check(metrics_ratio, METRICS_GOAL, True),
    }


def round_ratios(p50_on: list[float], p50_off: list[float]) -> dict[str, Any]:
    """The per-round ratios ``p50_on[i] / p50_off[i]``: their median (the figure) and spread (quartiles, range)."""
    values = np.asarray([on / off for on, off in zip(p50_on, p50_off, strict=True) if off > 0])
    if not values.size:
        return {"n": 0, "median": None, "p25": None, "p75": None, "min": None, "max": None}
    p25, median, p75 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    low, high = float(values.min()), float(values.max())
    return {"n": int(values.size), "median": median, "p25": p25, "p75": p75, "min": low, "max": high}


def histogram_mean(text: str, name: str, model: str) -> float | None:
    """``<name>_sum / <name>_count`` of the series labelled ``model`` in Prometheus text; None when absent."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name in (f"{name}_sum", f"{name}_count"):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found["sum"] / found["count"] if found.get("count") else None


def forward_ms(module: torch.nn.Module, batches: tuple[int, ...], calls: int) -> dict[str, float]:
    """Median milliseconds of one in-process forward of each number of rows, on one intra-op thread, interleaved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    inputs = {n: torch.randn(n, WIDTH) for n in batches}
    samples: dict[int, list[float]] = {n: [] for n in batches}
    try:
        with torch.inference_mode():
            for x in inputs.values():
                module(x)
            for _ in range(calls):
                for n, x in inputs.items():
                    start = time.perf_counter()
                    module(x)
                    samples[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {str(n): float(np.median(values)) * 1e3 for n, values in samples.items()}


def role(name: str, cmdline: list[str]) -> str:
    """Which part of a server a process is: ``java``, ``front`` (``torch-mme serve`` itself) or ``worker``."""
    if name == "java" or (cmdline and Path(cmdline[0]).name == "java"):
        return "java"
    if "torch_mme.cli" in cmdline:
        return "front"
    return "worker"


def cpu_seconds(pids: list[int]) -> dict[int, tuple[str, float]]:
    """Role and user + system CPU seconds of every process in the trees rooted at ``pids``, by pid."""
    seconds = {}
    for proc in (p for pid in pids for p in processes.tree(pid)):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            seconds[proc.pid] = (role(proc.name(), proc.cmdline()), times.user + times.system)
    return seconds


def cpu_used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two ``cpu_seconds`` readings (processes in both, or started in between)."""
    used: dict[str, float] = {}
    for pid, (kind, value) in after.items():
        used[kind] = used.get(kind, 0.0) + value - before.get(pid, (kind, 0.0))[1]
    return used


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Side:
    """One thing measured: where to send, what, and the process trees that serve it."""

    key: str
    port: int
    path: str
    raw: bytes
    pids: Any  # () -> list[int]
    expected: np.ndarray | None = None


def check_answer(side: Side) -> None:
    """One request; the answer must be 200 and (when ``expected``) the same numbers as the model in-process."""
    conn = KeepAlive(side.port)
    try:
        status, body = conn.send(side.raw)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"{side.key}: invoke answered {status}: {body[:300]!r}")
    if side.expected is not None:
        got = np.load(io.BytesIO(body), allow_pickle=False)
        if not np.allclose(got, side.expected, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{side.key}: answer differs from the in-process forward")


def throughput(sides: list[Side], sizes: Sizes) -> dict[str, dict[str, Any]]:
    """``CLIENTS`` clients on each side for ``chunk_s``, ``chunks`` times, in rotating order."""
    totals = {s.key: {"ok": 0, "errors": 0, "wall_s": 0.0, "client_cpu_s": 0.0, "server_cpu_s": {}} for s in sides}
    latency: dict[str, list[float]] = {s.key: [] for s in sides}
    chunk_rates: dict[str, list[float]] = {s.key: [] for s in sides}
    for side in sides:  # warm-up: JVM, batching, allocator
        run_load(side.port, [side.raw], CLIENTS, sizes.warm_s)
    by_key = {s.key: s for s in sides}
    for chunk in range(sizes.chunks):
        for key in rotation(list(by_key), chunk):
            side = by_key[key]
            server0, client0 = cpu_seconds(side.pids()), self_cpu()
            load, wall = run_load(side.port, [side.raw], CLIENTS, sizes.chunk_s)
            client1, server1 = self_cpu(), cpu_seconds(side.pids())
            t = totals[key]
            t["ok"] += load.ok
            t["errors"] += load.errors
            t["wall_s"] += wall
            t["client_cpu_s"] += client1 - client0
            for kind, used in cpu_used(server0, server1).items():
                t["server_cpu_s"][kind] = t["server_cpu_s"].get(kind, 0.0) + used
            latency[key] += load.latency_s
            chunk_rates[key].append(load.ok / wall)
        print(f"batching: throughput chunk {chunk + 1}/{sizes.chunks}", file=sys.stderr)
    out = {}
    for key, t in totals.items():
        out[key] = {
            **t,
            "rps": t["ok"] / t["wall_s"],
            "chunk_rps": chunk_rates[key],
            "client_cores": t["client_cpu_s"] / t["wall_s"],
            "server_cores": sum(t["server_cpu_s"].values()) / t["wall_s"],
            "server_cores_by_role": {kind: used / t["wall_s"] for kind, used in sorted(t["server_cpu_s"].items())},
            "latency_ms": summarize(latency[key], 1e3, "ms") if latency[key] else None,
        }
    return out


def one_client(sides: list[Side], chunks: int, calls: int) -> dict[str, dict[str, Any]]:
    """1 keep-alive client per side, ``calls`` requests per chunk, ``chunks`` chunks in rotating order."""
    conns = {s.key: KeepAlive(s.port) for s in sides}
    samples: dict[str, list[float]] = {s.key: [] for s in sides}
    by_key = {s.key: s for s in sides}
    try:
        for side in sides:
            timed(conns[side.key], side.raw, max(10, calls // 4))  # warm-up
        for chunk in range(chunks):
            for key in rotation(list(by_key), chunk):
                samples[key] += timed(conns[key], by_key[key].raw, calls)
    finally:
        for conn in conns.values():
            conn.close()
    return {key: summarize(values, 1e3, "ms") for key, values in samples.items()}


def paired_rounds(sides: list[Side], rounds: int, calls: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """1 keep-alive client per side; ``rounds`` rounds of ``calls`` requests on each side, the order rotating per
    round. Every sample (seconds) by side, and each round's p50 (ms) by side."""
    conns = {s.key: KeepAlive(s.port) for s in sides}
    samples: dict[str, list[float]] = {s.key: [] for s in sides}
    p50_ms: dict[str, list[float]] = {s.key: [] for s in sides}
    by_key = {s.key: s for s in sides}
    try:
        for side in sides:
            timed(conns[side.key], side.raw, max(10, calls))  # warm-up
        for chunk in range(rounds):
            for key in rotation(list(by_key), chunk):
                values = timed(conns[key], by_key[key].raw, calls)
                samples[key] += values
                p50_ms[key].append(float(np.percentile(values, 50)) * 1e3)
    finally:
        for conn in conns.values():
            conn.close()
    return samples, p50_ms


def archive(venv: Path, name: str, model_pt: Path, store: Path, log_path: Path) -> None:
    command = [str(venv / "bin" / "torch-model-archiver"), "--model-name", name, "--version", "1.0"]
    command += ["--serialized-file", str(model_pt), "--handler", str(APPS / "stacking_handler.py")]
    command += ["--export-path", str(store), "-f"]
    with open(log_path, "ab") as log:
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=300).returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed for {name}:\n{tail(log_path)}")


def start_torchserve(scratch: Path, model_pt: Path) -> tuple[TorchServe, dict[str, Any]]:
    """TorchServe from the peers' venv with the model registered at batch size 16 and at 1."""
    venv = peerenv.ensure()
    store = scratch / "ts-store"
    store.mkdir(parents=True)
    for name in ("ts_b16", "ts_b1"):
        archive(venv, name, model_pt, store, scratch / "archiver.log")
    server = TorchServe(scratch, venv, store)
    server.start()
    try:
        for name, batch in (("ts_b16", BATCH), ("ts_b1", 1)):
            query = {"url": f"{name}.mar", "model_name": name, "batch_size": str(batch)}
            query["max_batch_delay"] = str(DELAY_MS if batch > 1 else 100)
            status, body = server.register(query)
            if status != 200:
                raise RuntimeError(f"TorchServe register {name}: {status} {body[:300]!r}\n{server.diagnostics()}")
    except BaseException:
        server.stop()
        raise
    info = {"versions": peerenv.versions(venv), "venv": str(venv), **server.settings}
    info["register"] = f"batch_size={BATCH}&max_batch_delay={DELAY_MS}, and batch_size=1; initial_workers=1"
    info["handler"] = "bench/peers/apps/stacking_handler.py (stacks the batch into one forward)"
    return server, info


def serve_pids(server: LocalServer):
    return lambda: [server.process.pid] if server.process is not None and server.process.poll() is None else []


def metrics_call_us(calls: int) -> dict[str, float]:
    """Microseconds per call, in this process, of what metrics add to a request: the front's
    ``ModelMetrics.invoked`` (with the handler's timing header) and the handler's ``format_timing``."""
    from handler.timing import format_timing
    from torch_mme.runtime.metrics import ModelMetrics

    metrics, now = ModelMetrics(), time.time()
    value = format_timing(now, 0.0005, 1)
    start = time.perf_counter()
    for _ in range(calls):
        metrics.invoked("tiny", 200, 0.001, value, now)
    invoked = (time.perf_counter() - start) / calls * 1e6
    start = time.perf_counter()
    for _ in range(calls):
        format_timing(now, 0.0005, 1)
    return {"front_invoked_us": invoked, "handler_format_timing_us": (time.perf_counter() - start) / calls * 1e6}


def metrics_cost(scratch: Path, sizes: Sizes) -> dict[str, Any]:
    """Invoke p50 of the tiny model through two ``torch-mme serve``, one with ``TORCH_MME_METRICS=false``: the
    median of per-round p50 ratios (``paired_rounds``), their spread, and the pooled samples' p50 and p99."""
    models = scratch / "tiny-models"
    write_model(models / "tiny", seed=1)
    body = request_body()
    logs = {key: open(scratch / f"{key}.log", "wb") for key in ("metrics_on", "metrics_off")}  # noqa: SIM115
    servers = {
        "metrics_on": LocalServer(str(models), env={"TORCH_MME_METRICS": "true"}, log=logs["metrics_on"]),
        "metrics_off": LocalServer(str(models), env={"TORCH_MME_METRICS": "false"}, log=logs["metrics_off"]),
    }
    try:
        sides, metrics_status = [], {}
        for key, server in servers.items():
            server.start()
            status, answer = server.load("tiny", str(models / "tiny"))
            if status != 200:
                raise RuntimeError(f"{key}: LoadModel answered {status}: {answer}")
            raw = raw_request(server.port, "/models/tiny/invoke", body, JSON_TYPE, JSON_TYPE)
            sides.append(Side(key, server.port, "/models/tiny/invoke", raw, serve_pids(server)))
            metrics_status[key] = server.request("GET", "/metrics")[0]
        samples, round_p50 = paired_rounds(sides, sizes.metrics_rounds, sizes.metrics_calls)
        timed_ms = {key: summarize(values, 1e3, "ms") for key, values in samples.items()}
        for key, server in servers.items():
            metrics_status[key] = server.request("GET", "/metrics")[0]
    finally:
        for server in servers.values():
            server.stop()
        for log in logs.values():
            log.close()
    rounds = round_ratios(round_p50["metrics_on"], round_p50["metrics_off"])
    return {
        "latency_ms": timed_ms,
        "metrics_endpoint_status": metrics_status,
        "p50_ratio": rounds["median"],
        "round_p50_ratios": rounds,
        "round_p50_ms": round_p50,
        "pooled_p50_ratio": timed_ms["metrics_on"]["p50"] / timed_ms["metrics_off"]["p50"],
        "p99_ratio": timed_ms["metrics_on"]["p99"] / timed_ms["metrics_off"]["p99"],
        "in_process": metrics_call_us(20000 if sizes is FULL else 2000),
    }


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("batching", quick)
    result["config"] = {
        **asdict(sizes),
        "model": f"scripted {DEPTH} x (Linear({WIDTH}, {WIDTH}) + ReLU), float32, "
        f"{DEPTH * (WIDTH * WIDTH + WIDTH) * 4 / 2**20:.0f} MiB of weights",
        "body": f"one row of {WIDTH} float32 as .npy (Content-Type and Accept {NPY})",
        "clients": CLIENTS,
        "batched": MEMORY_CONFIG,
        "single": SINGLE_CONFIG,
        "client": "bench/peers/client.py run_load (asyncio, raw HTTP/1.1 keep-alive), in the benchmark process",
    }
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp:
        scratch = Path(tmp)
        models = scratch / "models"
        module = write_memory_model(models / "mme_b16", 7, MEMORY_CONFIG)
        write_memory_model(models / "mme_b1", 7, SINGLE_CONFIG)
        row = np.random.default_rng(5).standard_normal((1, WIDTH)).astype(np.float32)
        body = npy_bytes(row)
        with torch.inference_mode():
            expected = module(torch.from_numpy(row)).numpy()
        calls = 10 if quick else 30
        result["forward_ms"] = forward_ms(module, (1, BATCH), calls)
        log = open(scratch / "serve.log", "wb")  # noqa: SIM115
        serve = LocalServer(str(models), log=log)
        torchserve: TorchServe | None = None
        try:
            serve.start()
            sides = []
            for key in ("mme_b16", "mme_b1"):
                status, answer = serve.load(key, str(models / key))
                if status != 200:
                    raise RuntimeError(f"LoadModel {key} answered {status}: {answer}")
                path = f"/models/{key}/invoke"
                raw = raw_request(serve.port, path, body, NPY, NPY)
                sides.append(Side(key, serve.port, path, raw, serve_pids(serve), expected))
            try:
                torchserve, result["torchserve"] = start_torchserve(scratch / "ts", models / "mme_b16" / "model.pt")
                for key in ("ts_b16", "ts_b1"):
                    path = f"/predictions/{key}"
                    raw = raw_request(torchserve.port, path, body, NPY, NPY)
                    sides.append(Side(key, torchserve.port, path, raw, torchserve.pids, expected))
            except Exception as exc:  # noqa: BLE001 (the rest is measured without it; the report says why)
                result["torchserve"] = {"skipped": f"{type(exc).__name__}: {str(exc)[:2000]}"}
                print(f"batching: TorchServe skipped: {exc}", file=sys.stderr)
            for side in sides:
                check_answer(side)
            print(f"batching: throughput at {CLIENTS} clients, {sizes.chunks} chunks", file=sys.stderr)
            result["throughput"] = throughput(sides, sizes)
            print("batching: latency at 1 client", file=sys.stderr)
            result["one_client_ms"] = one_client(sides, sizes.chunks, sizes.latency_calls)
            status, _, text = serve.request("GET", "/metrics")
            name = "torch_mme_model_batch_size"
            result["mean_batch_size"] = {k: histogram_mean(text.decode(), name, k) for k in ("mme_b16", "mme_b1")}
        finally:
            serve.stop()
            log.close()
            if torchserve is not None:
                torchserve.stop()
        print("batching: metrics on/off, tiny model", file=sys.stderr)
        result["metrics_cost"] = metrics_cost(scratch, sizes)
    rps = {key: t["rps"] for key, t in result["throughput"].items()}
    p50 = {key: s["p50"] for key, s in result["one_client_ms"].items()}
    result["ratios"] = {
        "mme_b16_over_b1_rps": ratio(rps.get("mme_b16"), rps.get("mme_b1")),
        "ts_b16_over_b1_rps": ratio(rps.get("ts_b16"), rps.get("ts_b1")),
        "mme_b16_over_ts_b16_rps": ratio(rps.get("mme_b16"), rps.get("ts_b16")),
        "mme_b1_over_ts_b1_rps": ratio(rps.get("mme_b1"), rps.get("ts_b1")),
        "mme_b16_over_ts_b16_p50": ratio(p50.get("mme_b16"), p50.get("ts_b16")),
    }
    result["goals"] = goals(rps, p50, result["metrics_cost"]["p50_ratio"])
    finish(result, began)
    result["plot"] = plot(result, Path(out_dir))
    write_results(result, markdown(result), Path(out_dir))
    return result


def _mark(passed: bool | None) -> str:
    return "n/a" if passed is None else ("**pass**" if passed else "**fail**")


def markdown(result: dict[str, Any]) -> str:
    tp, one, mc, g, r = (result[k] for k in ("throughput", "one_client_ms", "metrics_cost", "goals", "ratios"))
    t_goal, p_goal, m_goal = g["throughput_ratio"], g["p50_at_1_client_ms"], g["metrics_p50_ratio"]
    goals = [
        [
            f"throughput at {CLIENTS} clients, batch {BATCH} / batch 1",
            f"{na(t_goal['value'])}x",
            f">= {THROUGHPUT_GOAL:g}x",
            _mark(t_goal["pass"]),
        ],
        [
            f"p50 at 1 client, batch {BATCH}",
            f"{na(p_goal['value'])} ms",
            f"<= batch-1 p50 + {DELAY_MS} ms = {na(p_goal['bound'])} ms",
            _mark(p_goal["pass"]),
        ],
        [
            "invoke p50, metrics on / off (tiny model; median of per-round ratios)",
            na(m_goal["value"], ".3f"),
            f"<= {METRICS_GOAL:g}",
            _mark(m_goal["pass"]),
        ],
    ]
    servers = []
    for key, t in tp.items():
        lat = t["latency_ms"] or {"p50": None, "p99": None}
        roles = ", ".join(f"{kind} {cores:.2f}" for kind, cores in t["server_cores_by_role"].items())
        servers.append(
            [
                LABELS[key],
                f"{t['rps']:.1f}",
                f"{na(lat['p50'], '.1f')} / {na(lat['p99'], '.1f')}",
                f"{one[key]['p50']:.2f} / {one[key]['p99']:.2f}",
                f"{t['client_cores']:.2f}",
                f"{t['server_cores']:.2f} ({roles})",
                t["errors"],
            ]
        )
    fwd, mean = result["forward_ms"], result.get("mean_batch_size", {})
    ceiling = BATCH * fwd["1"] / fwd[str(BATCH)]
    ts = result.get("torchserve", {})
    if "skipped" in ts:
        torchserve = f"TorchServe was not measured: {ts['skipped'].splitlines()[0]}"
    else:
        torchserve = (
            f"TorchServe {ts['versions'].get('torchserve')}: {ts['register']}; {ts['handler']}; {ts['torch_threads']}."
        )
    on, off = mc["latency_ms"]["metrics_on"], mc["latency_ms"]["metrics_off"]
    status = mc["metrics_endpoint_status"]
    metrics = [
        ["metrics on", f"{on['p50']:.3f}", f"{on['p99']:.3f}", on["n"], status["metrics_on"]],
        ["`TORCH_MME_METRICS=false`", f"{off['p50']:.3f}", f"{off['p99']:.3f}", off["n"], status["metrics_off"]],
        ["ratio on / off, pooled samples", f"{mc['pooled_p50_ratio']:.3f}", f"{mc['p99_ratio']:.3f}", "", ""],
    ]
    spread, calls = mc["round_p50_ratios"], result["config"]["metrics_calls"]
    return document(
        "Batching, TorchServe with the same batch settings, and the cost of metrics",
        result,
        "## Goals",
        table(["goal", "figure", "bound", ""], goals, "llll"),
        f"## Memory-bound model: {CLIENTS} clients and 1 client",
        table(
            ["server", "req/s at 32 clients", "p50 / p99 under load (ms)", "p50 / p99 at 1 client (ms)"]
            + ["client cores", "server cores (by process)", "errors"],
            servers,
            "lllllll",
        ),
        f"In-process forward (1 thread, median): {fwd['1']:.2f} ms for 1 row, {fwd[str(BATCH)]:.2f} ms for "
        f"{BATCH} rows, so the forward alone allows at most {ceiling:.2f}x from batching on this machine. Mean "
        f"batch size of the torch-mme runs (its /metrics, every request of the run): batch {BATCH} copy "
        f"{na(mean.get('mme_b16'))}, batch-1 copy {na(mean.get('mme_b1'))}.",
        f"Ratios: torch-mme batch {BATCH} / batch 1 throughput {na(r['mme_b16_over_b1_rps'])}x; "
        f"TorchServe batch {BATCH} / batch 1 {na(r['ts_b16_over_b1_rps'])}x; torch-mme / TorchServe at batch "
        f"{BATCH}: throughput {na(r['mme_b16_over_ts_b16_rps'])}x, p50 at 1 client "
        f"{na(r['mme_b16_over_ts_b16_p50'])}x; at batch 1: throughput {na(r['mme_b1_over_ts_b1_rps'])}x.",
        "Client and server cores are CPU seconds per second of the chunks: the client (this process, asyncio) "
        "and the server's whole process tree. Their sum against the machine's cores says whether the machine "
        "was saturated, and the client's share how much of it the load generator took.",
        torchserve,
        "## The cost of metrics (tiny model, 1 keep-alive client, two serve instances)",
        table(["", "p50 (ms)", "p99 (ms)", "samples", "GET /metrics"], metrics, "lllll"),
        f"The figure: the median of {spread['n']} rounds' p50 ratios on / off (each round {calls} requests on "
        f"each server, the order alternating), {na(spread['median'], '.3f')}; quartiles {na(spread['p25'], '.3f')} "
        f"- {na(spread['p75'], '.3f')}, range {na(spread['min'], '.3f')} - {na(spread['max'], '.3f')}.",
        f"p50 difference on - off (pooled): {(on['p50'] - off['p50']) * 1e3:.0f} us. In this process, what metrics "
        f"add to a request costs {mc['in_process']['front_invoked_us']:.1f} us in the front (`ModelMetrics.invoked`: "
        f"counter, latency, queue, inference and batch-size histograms) and "
        f"{mc['in_process']['handler_format_timing_us']:.1f} us in the handler (`format_timing`), plus the "
        "timing header's way through MMS.",
        f"![batching]({result['plot']})" if result.get("plot") else "",
        facts=[
            f"model: {result['config']['model']}; body: {result['config']['body']}",
            f"batched copy's torch-mme.json: `{json.dumps(MEMORY_CONFIG)}`; the other: `{json.dumps(SINGLE_CONFIG)}`",
            "measured side by side in one run, in alternating chunks whose order rotates (bench/batching.py)",
        ],
    )


def plot(result: dict[str, Any], out_dir: Path) -> str | None:
    """``batching.png``: throughput at 32 clients, p50/p99 at 1 client, metrics on/off p50; its file name."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colors = {"mme_b16": "#2b7bba", "mme_b1": "#9ecae1", "ts_b16": "#e05a4f", "ts_b1": "#f4a6a0"}
    keys = list(result["throughput"])
    names = [LABELS[k].replace(", ", "\n") for k in keys]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rps = [result["throughput"][k]["rps"] for k in keys]
    axes[0].bar(range(len(keys)), rps, color=[colors[k] for k in keys])
    axes[0].set_title(f"throughput at {CLIENTS} clients (req/s)")
    p50 = [result["one_client_ms"][k]["p50"] for k in keys]
    p99 = [result["one_client_ms"][k]["p99"] for k in keys]
    axes[1].bar(range(len(keys)), p50, color=[colors[k] for k in keys])
    axes[1].scatter(range(len(keys)), p99, marker="_", s=300, color="black", zorder=3, label="p99")
    axes[1].legend()
    axes[1].set_title("latency at 1 client, p50 (ms)")
    for ax, values in ((axes[0], rps), (axes[1], p50)):
        ax.set_xticks(range(len(keys)), names, fontsize=8)
        for x, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (x, v), ha="center", va="bottom", fontsize=8)
    lat = result["metrics_cost"]["latency_ms"]
    values = [lat["metrics_on"]["p50"], lat["metrics_off"]["p50"]]
    axes[2].bar([0, 1], values, color=["#2b7bba", "#9e9e9e"])
    axes[2].set_xticks([0, 1], ["metrics on", "metrics off"])
    for x, v in enumerate(values):
        axes[2].annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=8)
    axes[2].set_title(f"tiny model p50 (ms), median round ratio {na(result['metrics_cost']['p50_ratio'], '.3f')}")
    fig.suptitle(f"batching on a memory-bound model ({result['git_commit']})")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "batching.png", dpi=100)
    plt.close(fig)
    return "batching.png"
