"""The measurements, each run on every server in the same pass so that their ratios share the machine's state.

- ``loads``: LoadModel of new names one at a time on each server in turn, then (after a settle) USS of
  each server's whole process tree, for figure 3 (load time) and figure 4 (USS per additional model);
- ``latency``: 1 client per server on a keep-alive connection, in chunks that rotate between in-process
  and the servers, for figure 1;
- ``throughput``: N clients over 4 models for a fixed time, one server after the other per point (the
  order rotates), for figure 2.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bench.common import JSON_TYPE, summarize, time_inproc
from bench.peers.client import KeepAlive, Load, raw_request, run_load, timed
from bench.peers.servers import Peer, request
from handler import model as handler_model

MIB = 2**20


@dataclass
class Model:
    """One model directory as every server gets it, and the answer it must give to the body."""

    name: str
    kind: str
    path: Path
    expected: np.ndarray


def check_answer(data: bytes, expected: np.ndarray, what: str) -> None:
    try:
        np.testing.assert_allclose(np.array(json.loads(data)), expected, rtol=1e-4, atol=1e-5)
    except (AssertionError, ValueError) as exc:
        raise RuntimeError(f"{what}: wrong answer {data[:200]!r}") from exc


def invoke_once(server: Peer, model: Model, body: bytes) -> None:
    """One request on a fresh connection; raises unless it answers 200 with the model's output."""
    headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE}
    status, data = request(server.port, "POST", server.invoke_path(model.name), body, headers)
    if status != 200:
        raise RuntimeError(f"{server.label}: invoke {model.name} answered {status}: {data[:300]!r}")
    check_answer(data, model.expected, f"{server.label} {model.name}")


def rotated(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def loads(servers: list[Peer], models: dict[str, list[Model]], body: bytes, settle_s: float) -> dict[str, Any]:
    """Per kind, each model loaded on every server in turn (timed), invoked once, then every tree's USS."""
    time.sleep(settle_s)
    out: dict[str, Any] = {s.key: {"baseline_uss": s.tree_uss(), "load_s": {}, "uss": {}} for s in servers}
    for kind, kind_models in models.items():
        for s in servers:
            out[s.key]["load_s"][kind], out[s.key]["uss"][kind] = [], []
        for i, model in enumerate(kind_models):
            for s in rotated(servers, i):
                out[s.key]["load_s"][kind].append(s.load(model.name, model.path))
                invoke_once(s, model, body)
            time.sleep(settle_s)
            for s in servers:
                out[s.key]["uss"][kind].append(s.tree_uss())
            print(
                f"  {kind} {i + 1}/{len(kind_models)}: "
                + ", ".join(f"{s.key} {out[s.key]['load_s'][kind][-1] * 1e3:.0f} ms" for s in servers),
                file=sys.stderr,
            )
    for s in servers:
        entry = out[s.key]
        previous = entry["baseline_uss"]
        entry["load_ms"], entry["uss_increments_mib"], entry["uss_per_model_mib"] = {}, {}, {}
        for kind in models:
            entry["load_ms"][kind] = summarize(entry["load_s"][kind], 1e3, "ms")
            steps = [
                (b - a) / MIB for a, b in zip([previous, *entry["uss"][kind][:-1]], entry["uss"][kind], strict=True)
            ]
            previous = entry["uss"][kind][-1]
            entry["uss_increments_mib"][kind] = steps
            entry["uss_per_model_mib"][kind] = statistics.median(steps)
        entry["tree_uss_mib"] = {
            "baseline": entry["baseline_uss"] / MIB,
            **{kind: [u / MIB for u in entry["uss"][kind]] for kind in models},
        }
        del entry["baseline_uss"], entry["uss"]
    return out


def inproc_model(model: Model) -> handler_model.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return handler_model.load(str(model.path), torch.device("cpu"))


def forward_ms(model: handler_model.Model, body: bytes, calls: int) -> dict[str, Any]:
    """The forward alone (no JSON), for the model's description."""
    x = torch.tensor(json.loads(body), dtype=torch.float32)
    samples = []
    with torch.inference_mode():
        for _ in range(max(calls // 5, 3)):
            model.module(x)
        for _ in range(calls):
            start = time.perf_counter()
            model.module(x)
            samples.append(time.perf_counter() - start)
    return summarize(samples, 1e3, "ms")


def warm(servers: list[Peer], model: Model, body: bytes, requests: int) -> None:
    """``requests`` invokes of ``model`` on each server over one keep-alive connection (JIT-compiles the JVMs)."""
    for s in servers:
        conn = KeepAlive(s.port)
        try:
            raw = raw_request(s.port, s.invoke_path(model.name), body)
            check_answer(conn.send(raw)[1], model.expected, f"{s.label} {model.name}")
            timed(conn, raw, requests)
        finally:
            conn.close()


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def cpu_snapshot(server: Peer) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process of ``server``'s tree, with its role."""
    roots = set(server.pids())
    snap = {}
    for proc in server.tree():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            name = proc.name()
            role = "java" if name == "java" else "front" if proc.pid in roots else "model processes"
            snap[proc.pid] = (role, times.user + times.system)
    return snap


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by role (processes present in both)."""
    spent: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        if pid in before:
            spent[role] = spent.get(role, 0.0) + cpu - before[pid][1]
    return spent


def latency(
    servers: list[Peer], model: Model, body: bytes, requests: int, inproc_calls: int, warmup: int, rounds: int
) -> dict[str, Any]:
    """1 client per server, keep-alive; chunks rotate between in-process and each server, ``rounds`` times.

    Returns per path (``in_process`` and each server's key) the pooled summary in µs, each chunk's p50, and
    for the servers the CPU time per request of each part of the server (front, Java, model processes) and
    of the client, from the processes' CPU counters around each chunk.
    """
    local = inproc_model(model)
    conns = {s.key: KeepAlive(s.port) for s in servers}
    raws = {s.key: raw_request(s.port, s.invoke_path(model.name), body) for s in servers}
    samples: dict[str, list[list[float]]] = {"in_process": [], **{s.key: [] for s in servers}}
    cpu: dict[str, dict[str, float]] = {s.key: {} for s in servers}
    me = psutil.Process()
    try:
        time_inproc(local, body, max(warmup // 4, 10))
        for s in servers:
            status, data = conns[s.key].send(raws[s.key])
            check_answer(data, model.expected, f"{s.label} {model.name}")
            timed(conns[s.key], raws[s.key], warmup)
        server_chunks, inproc_chunks = split(requests, rounds), split(inproc_calls, rounds)
        paths: list[Any] = ["in_process", *servers]
        for r in range(rounds):
            for path in rotated(paths, r):
                gc.collect()
                if path == "in_process":
                    samples["in_process"].append(time_inproc(local, body, inproc_chunks[r]))
                    continue
                before, mine = cpu_snapshot(path), me.cpu_times()
                samples[path.key].append(timed(conns[path.key], raws[path.key], server_chunks[r]))
                spent, now = cpu_delta(before, cpu_snapshot(path)), me.cpu_times()
                spent["client"] = now.user + now.system - mine.user - mine.system
                for role, seconds in spent.items():
                    cpu[path.key][role] = cpu[path.key].get(role, 0.0) + seconds
    finally:
        for conn in conns.values():
            conn.close()
    out: dict[str, Any] = {}
    for key, chunks in samples.items():
        pooled = summarize([x for c in chunks for x in c], 1e6, "us")
        pooled["chunk_p50"] = [float(np.percentile(c, 50) * 1e6) for c in chunks]
        if key in conns:
            pooled["connections_opened"] = conns[key].opened
            pooled["cpu_us_per_request"] = {role: sec / requests * 1e6 for role, sec in cpu[key].items()}
        out[key] = pooled
    return out


def throughput(
    servers: list[Peer],
    models: list[Model],
    body: bytes,
    clients: tuple[int, ...],
    duration_s: float,
    segments: int,
) -> dict[str, Any]:
    """Per client count, ``clients`` connections spread over ``models``, ``duration_s`` per server in all.

    The time is cut into ``segments`` that rotate between the servers, so a slow minute of the machine
    hits them all alike; the figures add up the segments.
    """
    out: dict[str, Any] = {s.key: {} for s in servers}
    raws = {s.key: [raw_request(s.port, s.invoke_path(m.name), body) for m in models] for s in servers}
    for i, n in enumerate(clients):
        acc: dict[str, dict[str, Any]] = {s.key: {"load": Load(), "seconds": 0.0, "segment_rps": []} for s in servers}
        for segment in range(segments):
            for s in rotated(servers, i + segment):
                gc.collect()
                load, elapsed = run_load(s.port, raws[s.key], n, duration_s / segments)
                a = acc[s.key]
                a["load"].merge(load)
                a["seconds"] += elapsed
                a["segment_rps"].append(load.ok / elapsed)
        for s in servers:
            a = acc[s.key]
            load = a["load"]
            out[s.key][str(n)] = {
                "clients": n,
                "requests": load.ok,
                "errors": load.errors,
                "error_kinds": load.error_kinds,
                "seconds": a["seconds"],
                "rps": load.ok / a["seconds"],
                "segment_rps": a["segment_rps"],
                "connections": load.connections,
                "latency_ms": summarize(load.latency_s, 1e3, "ms") if load.latency_s else None,
            }
        print(
            f"  {n} client(s): " + ", ".join(f"{s.key} {out[s.key][str(n)]['rps']:.0f}/s" for s in servers),
            file=sys.stderr,
        )
    return out
