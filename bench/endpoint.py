"""The local SageMaker endpoint (``torch-mme endpoint``): cache hit vs. miss, and many models under Zipf, in one run.

Every model is a scripted ``nn.Linear(16, 4)`` packed ONCE with
``torch_mme.tools.packaging.pack``; each target in the store is a copy of that
``.tar.gz``, so targets differ only in name (and so in container model name).
Requests go through boto3's ``invoke_endpoint(TargetModel=...)`` with a JSON
body of one row of 16 floats; each part starts its own ``torch-mme serve``
(a ``LocalServer``) and attaches a ``LocalEndpoint`` to it by URL, so the
memory budget can be set on ``serve`` alone. Whether a request was a cache
hit is what the endpoint itself says: its ``sagemaker_ModelCacheHit`` summary
(1 a hit, 0 a miss), read from ``/metrics`` before and after the request.

1. **hit vs. miss**: after a warm-up target (one miss, then requests on every
   path, so the JVM in MMS is warm), each of ``targets`` fresh targets gets one
   miss (download + safe extract + LoadModel + invoke) and then ``hits`` hits.
   The hits alternate request by request between three paths to the same
   loaded model: boto3 -> endpoint, a raw keep-alive ``http.client`` POST to
   the endpoint (boto3's own client cost left out), and a keep-alive POST
   straight to serve's ``/models/<name>/invoke`` (no endpoint at all).
2. **Zipf**: ``models`` targets, a container whose memory budget holds about
   ``capacity`` of them (USS of serve's own processes, measured with one model
   loaded as admission counts them, plus ``capacity`` of admission's per-model
   estimates, plus the headroom), and a stream of requests drawn from Zipf(1.1)
   over the models with a fixed seed, sent by ONE client one after the other,
   so the LRU order is deterministic. Compared with an ideal LRU cache (an
   ``OrderedDict``) of the same stream with the largest number of models the
   endpoint held at once. When the misses of the full stream would not fit the
   time budget (each costs a LoadModel: ~0.1 s forked from serve's template,
   ~1 s with a fresh Python), only its first requests are sent; the cut is
   computed before sending, from part 1's costs and the ideal LRU, and recorded.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.error
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from botocore.exceptions import BotoCoreError, ClientError

from bench.common import (
    FEATURES,
    JSON_TYPE,
    OUTPUTS,
    finish,
    new_result,
    request_body,
    summarize,
    write_model,
    write_results,
)
from bench.report import bullets, document, ms, stats_row, table
from tests.support.endpoint import ENDPOINT_NAME, delta, invoke, read_metrics, running, start_endpoint
from tests.support.traffic import lru_hits, zipf_stream
from torch_mme.endpoint.naming import model_name
from torch_mme.runtime import processes
from torch_mme.runtime.admission import Admission
from torch_mme.runtime.registry import Registry
from torch_mme.settings import Settings
from torch_mme.tools.local_server import LocalEndpoint, LocalServer
from torch_mme.tools.packaging import pack

MB = 2**20
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
WARMUP_TARGET = "warmup.tar.gz"
DIRECT_WARMUP = "bench-direct-warmup"
ZIPF_EXPONENT = 1.1
ZIPF_SEED = 20251121
HEADROOM_MB = 64
SLACK_MODELS = 0.5
"""The budget holds ``capacity + SLACK_MODELS`` estimates, so exactly ``capacity`` fit while serve grows a little."""
SETTLE_S = 0.5
MISS_COST_FACTOR = 1.15
"""Zipf misses also wait for a 507, an unload, and a LoadModel beside many loaded models: part 1's miss, plus 15%."""
METRICS_READ_S = 0.004
"""What reading /metrics before and after a request adds to the stream's time, per request (not timed itself)."""


@dataclass(frozen=True)
class Sizes:
    """Part 1: targets, hits per target, warm-up requests per path. Part 2: models, requests, capacity, time budget."""

    targets: int
    hits: int
    warmup: int
    models: int
    requests: int
    capacity: int
    zipf_budget_s: float

    @property
    def zipf_deadline_s(self) -> float:
        """The stream stops sending here whatever the projection said (a slower machine than projected)."""
        return self.zipf_budget_s * 1.2


FULL = Sizes(targets=10, hits=50, warmup=1000, models=1000, requests=1000, capacity=20, zipf_budget_s=690)
QUICK = Sizes(targets=3, hits=50, warmup=200, models=100, requests=100, capacity=5, zipf_budget_s=95)


def part1_target(i: int) -> str:
    return f"hitmiss/t{i:02d}.tar.gz"


def zipf_target(i: int) -> str:
    return f"zipf/m{i:04d}.tar.gz"


def errors_in(metrics: dict[str, float]) -> dict[str, float]:
    """``sagemaker_InvocationErrors_total{type=...}`` series, by type."""
    return {k: v for k, v in metrics.items() if k.startswith("sagemaker_InvocationErrors_total")}


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, bytes]:
    """One POST on a keep-alive connection, response read to the end; (seconds, body); raises unless 200."""
    start = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"POST {path} answered {response.status}: {data[:500]!r}")
    return elapsed, data


def check_answer(data: bytes, expected: np.ndarray, what: str) -> None:
    """The answer must be the model's output, or the timing measured something else."""
    try:
        np.testing.assert_allclose(np.array(json.loads(data)), expected, rtol=1e-5, atol=1e-6)
    except (AssertionError, ValueError) as exc:
        raise RuntimeError(f"{what}: wrong answer {data[:200]!r}") from exc


def warm_serve(server: LocalServer, model_dir: Path, body: bytes, requests: int) -> dict[str, int]:
    """LoadModel a copy of ``model_dir`` directly, invoke it ``requests`` times (warms MMS's JVM), DELETE it.

    Serve then has no model, and its models root holds nothing (the endpoint would take a folder for a cached
    artifact). Returns USS in bytes: serve's own processes (all but the model's) while the model is loaded,
    which is what admission counts as serve's base; that model's processes; the whole tree once it is gone.
    """
    copy = Path(server.models_root) / DIRECT_WARMUP
    shutil.copytree(model_dir, copy / "model")
    status, reply = server.load(DIRECT_WARMUP, str(copy / "model"))
    if status != 200:
        raise RuntimeError(f"LoadModel {DIRECT_WARMUP} answered {status}: {reply}")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE}
        for _ in range(requests):
            post(conn, f"/models/{DIRECT_WARMUP}/invoke", body, headers)
    finally:
        conn.close()
    time.sleep(SETTLE_S)
    tree = processes.tree(server.process.pid)
    loaded = {
        "serve_uss_one_model": processes.uss([p for p in tree if processes.model_of(p) is None]),
        "model_uss": processes.uss([p for p in tree if processes.model_of(p) == DIRECT_WARMUP]),
    }
    if server.unload(DIRECT_WARMUP) != 200:
        raise RuntimeError(f"DELETE /models/{DIRECT_WARMUP} failed")
    listed = json.loads(server.request("GET", "/models")[2]).get("models", [])
    if listed:
        raise RuntimeError(f"serve still lists {listed} after the warm-up")
    shutil.rmtree(copy)
    time.sleep(SETTLE_S)
    return {**loaded, "tree_uss_no_model": processes.uss(processes.tree(server.process.pid))}


def measure_hit_miss(
    server: LocalServer, endpoint: LocalEndpoint, body: bytes, expected: np.ndarray, sizes: Sizes
) -> dict[str, Any]:
    """Part 1: per target one miss then ``sizes.hits`` hits on each of the three paths, alternating."""
    client = endpoint.client()
    to_endpoint = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=120)
    to_serve = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    misses: list[float] = []
    hits: dict[str, list[float]] = {"boto3": [], "raw": [], "direct": []}
    miss_parts: list[dict[str, float]] = []
    try:
        targets = [WARMUP_TARGET] + [part1_target(i) for i in range(sizes.targets)]
        for i, target in enumerate(targets):
            warmup = i == 0
            before = read_metrics(endpoint)
            seconds, status, data = invoke(client, target, body)
            after = read_metrics(endpoint)
            check_answer(data, expected, f"first request for {target}")
            if delta(after, before, "ModelCacheHit_count") != 1 or delta(after, before, "ModelCacheHit_sum") != 0:
                raise RuntimeError(f"the first request for {target} was not a miss by the endpoint's metrics")
            if not warmup:
                misses.append(seconds)
                miss_parts.append(
                    {
                        "total_ms": seconds * 1e3,
                        "download_ms": delta(after, before, "ModelDownloadingTime_sum") / 1e3,
                        "load_model_ms": delta(after, before, "ModelLoadingTime_sum") / 1e3,
                        "wait_ms": delta(after, before, "ModelLoadingWaitTime_sum") / 1e3,
                    }
                )
            name = model_name(target)
            raw_headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE, TARGET_HEADER: target}
            direct_headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE}
            rounds = sizes.warmup if warmup else sizes.hits
            timed: dict[str, list[float]] = {"boto3": [], "raw": [], "direct": []}
            before = read_metrics(endpoint)
            for _ in range(rounds):
                seconds, status, data = invoke(client, target, body)
                timed["boto3"].append(seconds)
                seconds, raw = post(to_endpoint, f"/endpoints/{ENDPOINT_NAME}/invocations", body, raw_headers)
                timed["raw"].append(seconds)
                seconds, direct = post(to_serve, f"/models/{name}/invoke", body, direct_headers)
                timed["direct"].append(seconds)
            after = read_metrics(endpoint)
            for what, answer in (("boto3", data), ("raw HTTP", raw), ("direct", direct)):
                check_answer(answer, expected, f"{target} via {what}")
            through_endpoint = 2 * rounds
            if (
                delta(after, before, "ModelCacheHit_sum") != through_endpoint
                or delta(after, before, "ModelCacheHit_count") != through_endpoint
            ):
                raise RuntimeError(f"not every later request for {target} was a hit by the endpoint's metrics")
            if not warmup:
                for path, samples in timed.items():
                    hits[path] += samples
            label = "warm-up" if warmup else f"miss {misses[-1] * 1e3:.0f} ms"
            print(
                f"  {target}: {label}; hit p50 boto3 {np.percentile(timed['boto3'], 50) * 1e3:.2f} ms, "
                f"direct {np.percentile(timed['direct'], 50) * 1e3:.2f} ms",
                file=sys.stderr,
            )
        final = read_metrics(endpoint)
    finally:
        to_endpoint.close()
        to_serve.close()

    miss = summarize(misses, 1e3, "ms")
    miss["all"] = miss_parts
    for part in ("download_ms", "load_model_ms", "wait_ms"):
        miss[f"{part}_mean"] = float(np.mean([p[part] for p in miss_parts]))
    result: dict[str, Any] = {
        "miss": miss,
        "hit_boto3": summarize(hits["boto3"], 1e3, "ms"),
        "hit_raw_http": summarize(hits["raw"], 1e3, "ms"),
        "hit_direct": summarize(hits["direct"], 1e3, "ms"),
        "loaded_models_at_end": final.get("sagemaker_LoadedModelCount"),
        "invocation_errors": errors_in(final),
    }
    hit, raw, direct = result["hit_boto3"], result["hit_raw_http"], result["hit_direct"]
    result["ratio"] = {
        "miss_over_hit_p50": miss["p50"] / hit["p50"],
        "miss_over_hit_p99": miss["p99"] / hit["p99"],
        "endpoint_over_direct_p50": hit["p50"] / direct["p50"],
        "endpoint_over_direct_p99": hit["p99"] / direct["p99"],
        "raw_endpoint_over_direct_p50": raw["p50"] / direct["p50"],
        "raw_endpoint_over_direct_p99": raw["p99"] / direct["p99"],
    }
    result["overhead_ms"] = {
        "endpoint_boto3_minus_direct_p50": hit["p50"] - direct["p50"],
        "endpoint_raw_minus_direct_p50": raw["p50"] - direct["p50"],
        "boto3_client_p50": hit["p50"] - raw["p50"],
    }
    return result


def affordable(stream: list[int], capacity: int, miss_s: float, hit_s: float, budget_s: float) -> tuple[int, float]:
    """The longest prefix of ``stream`` whose projected time fits ``budget_s``, and that projected time."""
    spent, n = 0.0, 0
    for hit in lru_hits(stream, capacity):
        cost = hit_s if hit else miss_s
        if spent + cost > budget_s:
            break
        spent += cost
        n += 1
    return n, spent


def measure_zipf(
    server: LocalServer, endpoint: LocalEndpoint, body: bytes, expected: np.ndarray, stream: list[int], sizes: Sizes
) -> dict[str, Any]:
    """Part 2: send ``stream`` one request at a time; per request the endpoint's verdict, latency and status."""
    client = endpoint.client()
    hit: list[bool | None] = []
    downloaded: list[int] = []
    evicted: list[int] = []
    loaded: list[int] = []
    latency_ms: list[float] = []
    status: list[int] = []
    errors: list[dict[str, Any]] = []
    first = read_metrics(endpoint)
    before = first
    began = time.perf_counter()
    stopped_early = False
    for i, model in enumerate(stream):
        if time.perf_counter() - began > sizes.zipf_deadline_s:
            stopped_early = True
            break
        target = zipf_target(model)
        code, data, message = 0, b"", ""
        start = time.perf_counter()
        try:
            seconds, code, data = invoke(client, target, body)
        except ClientError as exc:
            seconds = time.perf_counter() - start
            code = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = str(exc)[:500]
        except BotoCoreError as exc:
            seconds = time.perf_counter() - start
            message = f"{type(exc).__name__}: {exc}"[:500]
        after = read_metrics(endpoint)
        if code == 200 and not message:
            try:
                check_answer(data, expected, target)
            except RuntimeError as exc:
                message = str(exc)
        if message or code != 200:
            errors.append({"request": i, "target": target, "status": code, "error": message})
        counted = delta(after, before, "ModelCacheHit_count")
        hit.append(bool(delta(after, before, "ModelCacheHit_sum")) if counted == 1 else None)
        downloaded.append(int(delta(after, before, "ModelDownloadingTime_count")))
        evicted.append(int(delta(after, before, "ModelEvictions_total")))
        loaded.append(int(after.get("sagemaker_LoadedModelCount", 0)))
        latency_ms.append(round(seconds * 1e3, 3))
        status.append(code)
        before = after
        if (i + 1) % 100 == 0:
            done = [h for h in hit if h is not None]
            print(
                f"  {i + 1}/{len(stream)} requests, {time.perf_counter() - began:.0f} s: hit ratio "
                f"{sum(done) / max(len(done), 1):.3f}, loaded {loaded[-1]}, errors {len(errors)}",
                file=sys.stderr,
            )
    wall_s = time.perf_counter() - began
    final = read_metrics(endpoint)
    tree_uss = processes.uss(processes.tree(server.process.pid))

    sent = stream[: len(hit)]
    max_loaded = max(loaded) if loaded else 0
    ideal = lru_hits(sent, max_loaded)
    ideal_below = lru_hits(sent, max(max_loaded - 1, 1))
    known = [h for h in hit if h is not None]
    hit_lat = [latency_ms[i] / 1e3 for i, h in enumerate(hit) if h]
    miss_lat = [latency_ms[i] / 1e3 for i, h in enumerate(hit) if h is False]
    first_miss_lat = [latency_ms[i] / 1e3 for i, h in enumerate(hit) if h is False and downloaded[i]]
    reload_lat = [latency_ms[i] / 1e3 for i, h in enumerate(hit) if h is False and not downloaded[i]]
    hit_after_hit = [latency_ms[i] / 1e3 for i, h in enumerate(hit) if h and i and hit[i - 1]]
    return {
        "sent": len(sent),
        "stopped_early_at_deadline": stopped_early,
        "distinct_models_requested": len(set(sent)),
        "errors": errors,
        "unclassified_requests": len(hit) - len(known),
        "hits": sum(known),
        "misses": len(known) - sum(known),
        "misses_first_time": sum(1 for i, h in enumerate(hit) if h is False and downloaded[i]),
        "misses_reloaded_from_disk": sum(1 for i, h in enumerate(hit) if h is False and not downloaded[i]),
        "hit_ratio": sum(known) / len(known) if known else 0.0,
        "max_loaded": max_loaded,
        "loaded_at_end": final.get("sagemaker_LoadedModelCount"),
        "loaded_after_fill": sorted(set(loaded[loaded.index(max_loaded) :])) if loaded else [],
        "requests_below_max_after_fill": sum(1 for n in loaded[loaded.index(max_loaded) :] if n < max_loaded)
        if loaded
        else 0,
        "ideal_lru_capacity": max_loaded,
        "ideal_lru_hit_ratio": sum(ideal) / len(ideal) if ideal else 0.0,
        "ideal_lru_capacity_minus_1_hit_ratio": sum(ideal_below) / len(ideal_below) if ideal_below else 0.0,
        "disagreements_with_ideal_lru": sum(1 for h, g in zip(hit, ideal, strict=True) if h is not None and h != g),
        "evictions": delta(final, first, "ModelEvictions_total"),
        "evictions_by_request": sum(evicted),
        "disk_cache_evictions": delta(final, first, "DiskCacheEvictions_total"),
        "invocation_errors": errors_in(final),
        "latency_hit": summarize(hit_lat, 1e3, "ms") if hit_lat else None,
        "latency_hit_after_hit": summarize(hit_after_hit, 1e3, "ms") if hit_after_hit else None,
        "latency_miss": summarize(miss_lat, 1e3, "ms") if miss_lat else None,
        "latency_miss_first_time": summarize(first_miss_lat, 1e3, "ms") if first_miss_lat else None,
        "latency_miss_reload": summarize(reload_lat, 1e3, "ms") if reload_lat else None,
        "load_model_ms_mean": delta(final, first, "ModelLoadingTime_sum")
        / 1e3
        / max(delta(final, first, "ModelLoadingTime_count"), 1),
        "unload_model_ms_mean": delta(final, first, "ModelUnloadingTime_sum")
        / 1e3
        / max(delta(final, first, "ModelUnloadingTime_count"), 1),
        "tree_uss_at_end": tree_uss,
        "stream_wall_s": wall_s,
        "requests": {
            "model": sent,
            "hit": hit,
            "ideal_lru_hit": ideal,
            "downloaded": downloaded,
            "evictions": evicted,
            "loaded_after": loaded,
            "latency_ms": latency_ms,
            "status": status,
        },
    }


def markdown(result: dict[str, Any]) -> str:
    """The short human summary written next to the JSON."""
    hm, z, cfg, b = result["hit_miss"], result["zipf"], result["config"], result["budget"]
    r, over = hm["ratio"], hm["overhead_ms"]
    latency_head = ["request", "n", "p50", "p99", "mean", "max"]
    hit_miss = [
        stats_row("miss, boto3 -> endpoint", hm["miss"], ms),
        stats_row("hit, boto3 -> endpoint", hm["hit_boto3"], ms),
        stats_row("hit, raw keep-alive HTTP -> endpoint", hm["hit_raw_http"], ms),
        stats_row("hit, keep-alive HTTP -> serve `/models/<name>/invoke` (direct)", hm["hit_direct"], ms),
    ]
    ratios = [
        ("**miss / hit** (boto3)", f"**{r['miss_over_hit_p50']:.0f}x**", f"{r['miss_over_hit_p99']:.0f}x"),
        (
            "**endpoint hit (boto3) / direct**",
            f"**{r['endpoint_over_direct_p50']:.2f}x**",
            f"{r['endpoint_over_direct_p99']:.2f}x",
        ),
        (
            "endpoint hit (raw HTTP) / direct",
            f"{r['raw_endpoint_over_direct_p50']:.2f}x",
            f"{r['raw_endpoint_over_direct_p99']:.2f}x",
        ),
    ]
    stream = [
        f"stream: p(rank r) ∝ 1/r^{ZIPF_EXPONENT} over ranks 1..{cfg['models']}, ranks mapped to models by a "
        f"permutation, seed {cfg['zipf_seed']}; {z['distinct_models_requested']} distinct models requested"
    ]
    if z["sent"] < cfg["requests"]:
        p = result["zipf_plan"]
        stream.append(
            f"**reduced from {cfg['requests']} to {z['sent']} requests** to stay within the time budget: the full "
            f"stream would be {p['full_stream_misses_ideal']} misses at about {p['miss_cost_s']:.2f} s each "
            f"(~{p['full_stream_projected_s'] / 60:.1f} min); the first {p['planned']} requests were projected "
            f"at {p['planned_projected_s']:.0f} s (budget {cfg['zipf_budget_s']:.0f} s)"
            + ("; the stream then hit its hard deadline and stopped early" if z["stopped_early_at_deadline"] else "")
        )
    stream += [
        f"memory budget on serve: **{b['budget_mb']} MB** = serve's own processes {b['base_uss_mb']:.1f} MB "
        f"+ ({cfg['capacity']} + {b['slack_models']}) x {b['per_model_estimate_mb']:.2f} MB (admission's per-model "
        "estimate: overhead "
        f"{b['model_overhead_mb']} MB + weights; accounted at the larger of it and the model's USS, "
        f"{b['model_uss_mb']:.1f} MB here; the extra half keeps the count from flipping as serve's own USS grows "
        f"a little with each load) + headroom {b['headroom_mb']} MB, rounded up; 1 MB = 2^20 bytes",
        f"serve's own processes are measured USS of all but the model's with one model loaded, as admission "
        f"counts them: the whole tree with no model is {b['tree_uss_no_model_mb']:.1f} MB"
        + (
            ", more because the fork template's pages are its own (USS) until a model's processes share them; "
            "budgeting from that figure would hold a few models more than aimed"
            if b["fork_server"]
            else ""
        )
        + f"; the serve tree was {z['tree_uss_at_end'] / MB:.0f} MB at the end",
    ]
    figures = [
        ("errors", f"**{len(z['errors'])}**"),
        ("max LoadedModelCount observed", f"**{z['max_loaded']}** (at the end {z['loaded_at_end']:g})"),
        (
            "requests after the first time full that left fewer loaded (counts seen: "
            f"{', '.join(str(n) for n in z['loaded_after_fill'])})",
            z["requests_below_max_after_fill"],
        ),
        ("**hit ratio, observed**", f"**{z['hit_ratio']:.3f}** ({z['hits']} hits, {z['misses']} misses)"),
        (f"**hit ratio, ideal LRU of capacity {z['ideal_lru_capacity']}**", f"**{z['ideal_lru_hit_ratio']:.3f}**"),
        (
            f"hit ratio, ideal LRU of capacity {max(z['ideal_lru_capacity'] - 1, 1)}",
            f"{z['ideal_lru_capacity_minus_1_hit_ratio']:.3f}",
        ),
        ("requests where the endpoint and the ideal LRU disagree", z["disagreements_with_ideal_lru"]),
        (
            "misses: first time (download + extract) / reloaded from the disk cache",
            f"{z['misses_first_time']} / {z['misses_reloaded_from_disk']}",
        ),
        ("evictions (`sagemaker_ModelEvictions_total`)", f"{z['evictions']:g}"),
        (
            "LoadModel / UnloadModel, mean (endpoint metrics)",
            f"{z['load_model_ms_mean']:.0f} ms / {z['unload_model_ms_mean']:.0f} ms",
        ),
        ("wall time of the stream", f"{z['stream_wall_s']:.0f} s"),
    ]
    zipf_latency = [
        stats_row("hit", z["latency_hit"], ms),
        stats_row("hit, the request before it a hit too", z["latency_hit_after_hit"], ms),
        stats_row("miss (all)", z["latency_miss"], ms),
        stats_row("miss, first time (download + extract + LoadModel)", z["latency_miss_first_time"], ms),
        stats_row("miss, reloaded (evict + LoadModel)", z["latency_miss_reload"], ms),
    ]
    errors = [f"request {e['request']} `{e['target']}`: {e['status']} {e['error']}" for e in z["errors"]]
    return document(
        "endpoint: cache hit vs. miss, and many models under Zipf(1.1) (`torch-mme endpoint` + `serve`)",
        result,
        f"## Hit vs. miss: {cfg['targets']} targets, each 1 miss then {cfg['hits']} hits per path",
        f"After a warm-up target (1 miss, then {cfg['warmup']} requests per path). A miss is the first request for "
        "a target: download from the store + safe extract + LoadModel + invoke. Hits alternate request by request "
        "between the three paths to the same loaded model.",
        table(latency_head, hit_miss),
        table(["ratio", "p50", "p99"], ratios),
        f"A miss's parts, mean: download {hm['miss']['download_ms_mean']:.1f} ms, LoadModel "
        f"{hm['miss']['load_model_ms_mean']:.0f} ms (the request waited {hm['miss']['wait_ms_mean']:.0f} ms for "
        f"its model in all). At p50 the endpoint adds {over['endpoint_raw_minus_direct_p50']:.2f} ms to a hit "
        f"(its own hop: aiohttp in, routing, aiohttp out to serve), and boto3's client another "
        f"{over['boto3_client_p50']:.2f} ms (signing, building and parsing the request).",
        [
            f"## Many models: {cfg['models']} targets, {z['sent']} requests from Zipf({ZIPF_EXPONENT}), one client",
            "",
            *bullets(stream),
        ],
        table(["figure", "value"], figures),
        table(["latency", "n", "p50", "p99", "mean", "max"], zipf_latency),
        ["Errors:", "", *bullets(errors)] if errors else [],
        f"Whole run: {result['wall_s']:.0f} s.",
        facts=[
            f"model: scripted `nn.Linear({FEATURES}, {OUTPUTS})` packed once ({cfg['artifact_bytes']} bytes .tar.gz), "
            f"copied to every target; JSON body of {cfg['body_bytes']} bytes; boto3 "
            "`invoke_endpoint(TargetModel=...)`, no retries; hit or miss as the endpoint's `sagemaker_ModelCacheHit` "
            "metric says (read before and after each request); each part on its own `serve` + `endpoint` (127.0.0.1)"
        ],
    )


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Measure both parts in one run; write ``endpoint.json`` and ``.md`` to ``out_dir``; return the result."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("endpoint", quick)
    body = request_body()
    rows = json.loads(body)

    with tempfile.TemporaryDirectory(prefix="torch-mme-bench-") as tmp:
        base = Path(tmp)
        store, build = base / "store", base / "build"
        module = write_model(build / "model", seed=0)
        with torch.no_grad():
            expected = module(torch.tensor(rows)).numpy()
        artifact = store / WARMUP_TARGET
        store.mkdir(parents=True)
        size = pack(str(build / "model"), str(artifact))
        targets = [part1_target(i) for i in range(sizes.targets)] + [zipf_target(i) for i in range(sizes.models)]
        for target in targets:
            (store / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(artifact, store / target)
        result["config"] = {
            **asdict(sizes),
            "zipf_exponent": ZIPF_EXPONENT,
            "zipf_seed": ZIPF_SEED,
            "headroom_mb": HEADROOM_MB,
            "body_bytes": len(body),
            "artifact_bytes": size,
            "torch_threads": torch.get_num_threads(),
        }

        print(f"hit vs. miss: {sizes.targets} targets x (1 miss + {sizes.hits} hits x 3 paths)", file=sys.stderr)
        with running(base / "models-hitmiss", store, base, "hitmiss") as (server, endpoint):
            measured = warm_serve(server, build / "model", body, sizes.warmup)
            base_bytes = measured["serve_uss_one_model"]
            print(
                f"  serve tree with no model: {measured['tree_uss_no_model'] / MB:.1f} MB; serve's own processes "
                f"with one model loaded: {base_bytes / MB:.1f} MB, the model's: {measured['model_uss'] / MB:.1f} MB",
                file=sys.stderr,
            )
            start_endpoint(endpoint)
            result["hit_miss"] = measure_hit_miss(server, endpoint, body, expected, sizes)

        settings = Settings.from_env({**os.environ, "TORCH_MME_MEMORY_HEADROOM_MB": str(HEADROOM_MB)})
        estimate = Admission(settings, Registry()).estimate(str(build / "model")).bytes
        # half an estimate more: the boundary then sits mid-way, and serve's own slow growth (Java, a little per
        # load) does not flip the count between capacity and capacity - 1
        budget_mb = math.ceil((base_bytes + (sizes.capacity + SLACK_MODELS) * estimate) / MB) + HEADROOM_MB
        result["budget"] = {
            "budget_mb": budget_mb,
            "base_uss_mb": base_bytes / MB,
            "tree_uss_no_model_mb": measured["tree_uss_no_model"] / MB,
            "model_uss_mb": measured["model_uss"] / MB,
            "per_model_estimate_mb": estimate / MB,
            "model_overhead_mb": settings.model_overhead_mb,
            "fork_server": settings.fork_server,
            "headroom_mb": HEADROOM_MB,
            "capacity_aimed": sizes.capacity,
            "slack_models": SLACK_MODELS,
        }

        stream = zipf_stream(sizes.models, sizes.requests, ZIPF_EXPONENT, ZIPF_SEED)
        hm = result["hit_miss"]
        miss_s = hm["miss"]["mean"] / 1e3 * MISS_COST_FACTOR
        hit_s = hm["hit_boto3"]["mean"] / 1e3 + METRICS_READ_S
        planned, projected = affordable(stream, sizes.capacity, miss_s, hit_s, sizes.zipf_budget_s)
        full_misses = lru_hits(stream, sizes.capacity).count(False)
        result["zipf_plan"] = {
            "requested": sizes.requests,
            "planned": planned,
            "planned_projected_s": projected,
            "miss_cost_s": miss_s,
            "hit_cost_s": hit_s,
            "full_stream_misses_ideal": full_misses,
            "full_stream_projected_s": full_misses * miss_s + (sizes.requests - full_misses) * hit_s,
        }
        if planned < sizes.requests:
            print(
                f"  the full stream projects to {result['zipf_plan']['full_stream_projected_s']:.0f} s; "
                f"sending its first {planned} requests (~{projected:.0f} s)",
                file=sys.stderr,
            )
        stream = stream[:planned]

        env = {"TORCH_MME_MEMORY_BUDGET_MB": str(budget_mb), "TORCH_MME_MEMORY_HEADROOM_MB": str(HEADROOM_MB)}
        print(
            f"Zipf: {sizes.models} models, {len(stream)} requests, budget {budget_mb} MB (~{sizes.capacity} models)",
            file=sys.stderr,
        )
        with running(base / "models-zipf", store, base, "zipf", env=env) as (server, endpoint):
            again = warm_serve(server, build / "model", body, sizes.warmup)
            result["budget"]["zipf_serve"] = {k: v / MB for k, v in again.items()}
            start_endpoint(endpoint)
            try:
                result["zipf"] = measure_zipf(server, endpoint, body, expected, stream, sizes)
            except urllib.error.URLError as exc:
                raise RuntimeError(f"the endpoint's /metrics did not answer: {exc}") from exc

    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result
