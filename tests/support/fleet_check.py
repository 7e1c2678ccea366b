"""The fleet simulator (torch_mme/tools/fleet.py) against the real thing: one simulated instance and a
``torch-mme endpoint`` + ``serve`` on the same sequential request stream, compared request by request.

tests/integration/test_fleet_check.py asserts it on 200 requests; ``python -m bench --only fleet`` reruns it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.endpoint import delta, invoke, read_metrics, running, start_endpoint
from tests.support.models import request_body, write_model
from torch_mme.endpoint.naming import model_name
from torch_mme.tools.fleet import Costs, Fleet, Stream, simulate, zipf_models
from torch_mme.tools.packaging import pack

CHECK_SEED = 20261201
CHECK_DECLARED_MB = 600
"""Each check model declares this in ``torch-mme.json``; admission accounts it (a tiny model's USS is ~19 MB)."""
CHECK_BASE_ALLOWANCE_MB = 400
"""Room in the budget for serve's own processes (USS ~240 MB with models loaded, endpoint.md). With 600 MB
per model, ``capacity`` models fit and one more does not whether serve's own USS is 0 or 700 MB."""
CHECK_HEADROOM_MB = 64
SEQUENTIAL_GAP_S = 1000.0
"""Arrivals this far apart: each request ends before the next, as the check's one sequential client sends them."""


def check_stream(models: int, requests: int, s: float, seed: int, size_mb: float) -> Stream:
    """Zipf(s) over ``models`` equal models, one request after the other (no overlap)."""
    rng = np.random.default_rng(seed)
    chosen = zipf_models(models, requests, s, rng)
    names = tuple(f"check/c{i:02d}.tar.gz" for i in range(models))
    return Stream(np.arange(requests) * SEQUENTIAL_GAP_S, chosen, np.full(models, float(size_mb)), names)


def check_against_endpoint(
    work_dir: Path,
    models: int = 20,
    capacity: int = 5,
    requests: int = 200,
    s: float = 1.1,
    seed: int = CHECK_SEED,
    costs: Costs | None = None,
) -> dict[str, Any]:
    """One simulated instance against a real ``torch-mme endpoint`` + ``serve``, on the same request sequence.

    ``models`` copies of a tiny scripted model, each declaring ``CHECK_DECLARED_MB`` (``torch-mme.json``), in a
    local store; serve's memory budget holds ``capacity`` of them (``TORCH_MME_MEMORY_BUDGET_MB``), the simulated
    instance ``capacity + 0.5`` times the declared size. One boto3 client sends the Zipf(s) stream one request
    at a time; per request the endpoint's own ModelCacheHit metric says hit or miss, and serve's model list
    before and after says which models it unloaded. Returns both sides' sequences, where they differ, and the
    latencies of hits and misses (real: measured at the client; simulated: from ``costs``).
    """
    # the artifacts are 2 kB whatever they declare: their download and load are the fixed parts alone
    costs = replace(costs or Costs.measured(), load_ms_per_mb=0.0, download_ms_per_mb=0.0)
    stream = check_stream(models, requests, s, seed, CHECK_DECLARED_MB)
    fleet = Fleet(instance_mb=(capacity + 0.5) * CHECK_DECLARED_MB, workers=1, load_slots=1)
    sim = simulate(stream, 1, fleet, costs)

    budget_mb = CHECK_BASE_ALLOWANCE_MB + int((capacity + 0.5) * CHECK_DECLARED_MB) + CHECK_HEADROOM_MB
    env = {
        "TORCH_MME_MEMORY_BUDGET_MB": str(budget_mb),
        "TORCH_MME_MEMORY_HEADROOM_MB": str(CHECK_HEADROOM_MB),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # admission counts the declared size once per worker
    }
    store, build = work_dir / "store", work_dir / "build"
    write_model(build / "model", seed=0)
    (build / "model" / "torch-mme.json").write_text(json.dumps({"memory_mb": CHECK_DECLARED_MB}))
    artifact = work_dir / "check.tar.gz"
    pack(str(build / "model"), str(artifact))
    for target in stream.names:
        (store / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact, store / target)
    index_of = {model_name(t): i for i, t in enumerate(stream.names)}
    body = request_body()

    hits: list[bool | None] = []
    evicted: list[list[int]] = []
    latency_ms: list[float] = []
    max_loaded = 0
    errors: list[str] = []
    began = time.perf_counter()
    with running(work_dir / "models", store, work_dir, "fleet-check", env=env) as (server, endpoint):
        start_endpoint(endpoint)
        client = endpoint.client()

        def listed() -> set[int]:
            answer = json.loads(server.request("GET", "/models")[2]).get("models", [])
            return {index_of[m["modelName"]] for m in answer if m.get("modelName") in index_of}

        loaded = listed()
        first = read_metrics(endpoint)
        for i, model in enumerate(stream.models):
            before = read_metrics(endpoint)
            try:
                seconds, status, _ = invoke(client, stream.names[model], body)
            except Exception as exc:  # recorded: the comparison shows where it happened
                seconds, status = math.nan, 0
                errors.append(f"request {i}: {type(exc).__name__}: {exc}"[:300])
            after = read_metrics(endpoint)
            now = listed()
            counted = delta(after, before, "ModelCacheHit_count") == 1
            hits.append(bool(delta(after, before, "ModelCacheHit_sum")) if counted and status == 200 else None)
            evicted.append(sorted(loaded - now))
            latency_ms.append(seconds * 1e3)
            max_loaded = max(max_loaded, len(now))
            loaded = now
        final = read_metrics(endpoint)
    wall_s = time.perf_counter() - began

    def mean_ms(name: str, fallback: float) -> float:
        """The mean of an endpoint timing metric over the check, in ms (the endpoint reports microseconds)."""
        count = delta(final, first, f"{name}_count")
        return delta(final, first, f"{name}_sum") / 1e3 / count if count else fallback

    answered_ms = [v for v, h in zip(latency_ms, hits, strict=True) if h]
    # the same simulation with this run's own costs (the endpoint's metrics; a hit's mean at the client): what
    # is left between it and the real misses is what the simulator does not model
    here = replace(
        costs,
        invoke_ms=float(np.mean(answered_ms)) if answered_ms else costs.invoke_ms,
        load_fixed_ms=mean_ms("ModelLoadingTime", costs.load_fixed_ms),
        unload_ms=mean_ms("ModelUnloadingTime", costs.unload_ms),
        download_fixed_ms=mean_ms("ModelDownloadingTime", costs.download_fixed_ms),
        source="this check's own endpoint metrics",
    )
    sim_here = simulate(stream, 1, fleet, here)

    sim_evicted = [sorted(v) for v in sim.evicted]
    hit_mismatch = [i for i, (a, b) in enumerate(zip(hits, sim.hits, strict=True)) if a != b]
    evict_mismatch = [i for i, (a, b) in enumerate(zip(evicted, sim_evicted, strict=True)) if a != b]
    real_ms, sim_ms = np.asarray(latency_ms), sim.latency_s * 1e3

    def stats(values: np.ndarray, mask: list[bool]) -> dict[str, float] | None:
        chosen = values[np.asarray(mask, dtype=bool)]
        chosen = chosen[~np.isnan(chosen)]
        if not chosen.size:
            return None
        return {"n": int(chosen.size), "p50_ms": float(np.percentile(chosen, 50)), "mean_ms": float(chosen.mean())}

    real_hits = [h is True for h in hits]
    real_misses = [h is False for h in hits]
    answered = [h for h in hits if h is not None]
    return {
        "config": {
            "models": models,
            "capacity": capacity,
            "requests": requests,
            "zipf": s,
            "seed": seed,
            "declared_mb": CHECK_DECLARED_MB,
            "budget_mb": budget_mb,
            "headroom_mb": CHECK_HEADROOM_MB,
            "sim_instance_mb": fleet.instance_mb,
        },
        "hit_ratio_real": answered.count(True) / len(answered) if answered else 0.0,
        "hit_ratio_sim": sim.hits.count(True) / requests,
        "hit_mismatches": hit_mismatch,
        "eviction_mismatches": evict_mismatch,
        "evictions_real": sum(len(e) for e in evicted),
        "evictions_sim": sum(len(e) for e in sim_evicted),
        "max_loaded_real": max_loaded,
        "errors": errors,
        "latency": {
            "real_hit": stats(real_ms, real_hits),
            "real_miss": stats(real_ms, real_misses),
            "sim_hit": stats(sim_ms, [h is True for h in sim.hits]),
            "sim_miss": stats(sim_ms, [h is False for h in sim.hits]),
            "sim_this_run_costs_hit": stats(sim_here.latency_s * 1e3, [h is True for h in sim_here.hits]),
            "sim_this_run_costs_miss": stats(sim_here.latency_s * 1e3, [h is False for h in sim_here.hits]),
        },
        "costs": asdict(costs),
        "costs_this_run": asdict(here),
        "wall_s": wall_s,
        "sequences": {
            "model": [int(m) for m in stream.models],
            "hit_real": hits,
            "hit_sim": sim.hits,
            "evicted_real": evicted,
            "evicted_sim": sim_evicted,
            "latency_ms_real": [round(v, 3) for v in latency_ms],
        },
    }
