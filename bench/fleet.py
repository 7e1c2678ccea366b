"""How many instances does a workload need? A discrete-event simulation of a SageMaker MME fleet.

``N`` instances, each with a memory capacity for models, ``workers`` invoke slots (CPU workers: queueing
shows up in p99) and ``load_slots`` load slots; ``M`` models with sizes; a request stream (Zipf(s) over
the models with Poisson arrivals at ``rate`` req/s, or a recorded ``time_s,target_model`` trace).

Routing follows SageMaker's documented behaviour, and on one instance this project's endpoint
(``torch_mme/endpoint/router.py``) exactly; which instance a miss goes to SageMaker does not document,
so that choice is this simulator's:

- a model loaded on an instance is served there (loaded on several: the least busy one); a request that
  finds it still loading waits for that load (and counts as a miss, as the endpoint's ModelCacheHit does);
  with ``replicate_at``, a model whose instance has that many invokes queued gets a copy on another one;
- a miss goes to an instance with room (the one with the most free memory), else to the instance whose
  least recently used idle model is the oldest in the fleet, which unloads its LRU idle models (last used =
  the end of their last invoke) until the model fits; a model bigger than an instance is an error
  (``ModelTooBig``), a miss no instance can make room for (all in use) is a 507 counted in ``errors``;
- a load costs: download (first time on that instance, or after its disk cache dropped it), the unloads,
  LoadModel; the first invoke after a load costs ``first_invoke_ms`` (a scripted model's first calls).

Default costs (``Costs.measured``) come from ``bench/results/endpoint.json`` (this project's endpoint and
serve on a 2-CPU machine, tiny scripted models): the fixed parts of invoke, first invoke, LoadModel, unload
and download. Per-MB costs were not measured here (only tiny models were) and are ASSUMPTIONS:
``DOWNLOAD_MS_PER_MB`` (S3 to instance at ~125 MB/s) and ``LOAD_MS_PER_MB`` (deserialising at ~500 MB/s).

``check_against_endpoint`` runs one simulated instance and a real ``torch-mme endpoint`` + ``serve`` on
the same sequential request stream and compares the hit/miss sequences request by request.

CLI: ``python -m bench.fleet --models 1000 --model-mb 200 --instance-mb 16000 --rate 50 --zipf 1.1
--instances 1-8 [--trace FILE] [--target-p99-ms 500]``. ``python -m bench --only fleet`` writes
``bench/results/fleet.{json,md}`` and ``fleet.png`` for the default scenario plus the check.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Not bench.common's: that imports torch, and the simulator and its CLI need only numpy."""
MEASURED = REPO_ROOT / "bench" / "results" / "endpoint.json"
DOWNLOAD_MS_PER_MB = 8.0
"""ASSUMED, not measured here: ~125 MB/s from S3 to an instance."""
LOAD_MS_PER_MB = 2.0
"""ASSUMED, not measured here: ~500 MB/s to read and deserialise weights already on local disk."""


class ModelTooBig(ValueError):
    """A model does not fit an empty instance: no number of instances serves it."""


@dataclass(frozen=True)
class Costs:
    """Service times in ms; a load is ``load_fixed_ms + load_ms_per_mb * size`` (download likewise)."""

    invoke_ms: float = 2.4
    first_invoke_ms: float = 32.0
    load_fixed_ms: float = 122.0
    load_ms_per_mb: float = LOAD_MS_PER_MB
    unload_ms: float = 36.0
    download_fixed_ms: float = 0.5
    download_ms_per_mb: float = DOWNLOAD_MS_PER_MB
    source: str = "built-in defaults"

    @classmethod
    def measured(cls, path: Path = MEASURED) -> Costs:
        """The fixed costs from the endpoint benchmark's result (the built-in defaults where it is absent).

        invoke: a hit through boto3 -> endpoint -> serve, mean; first invoke: a miss's time outside its wait
        for the model (the first calls of a scripted model are slow); LoadModel and unload: means of the Zipf
        part (many models loaded, as on a full instance); download: the hit/miss part's mean (a local store).
        """
        try:
            result = json.loads(path.read_text())
            miss, zipf = result["hit_miss"]["miss"], result["zipf"]
            return cls(
                invoke_ms=result["hit_miss"]["hit_boto3"]["mean"],
                first_invoke_ms=max(miss["mean"] - miss["wait_ms_mean"], 0.0),
                load_fixed_ms=zipf["load_model_ms_mean"],
                unload_ms=zipf["unload_model_ms_mean"],
                download_fixed_ms=miss["download_ms_mean"],
                source=f"{path.relative_to(REPO_ROOT)} ({result.get('date_utc', '?')}, commit "
                f"{result.get('git_commit', '?')}); per-MB costs assumed",
            )
        except (OSError, KeyError, TypeError, ValueError):
            return cls()

    def load_ms(self, size_mb: float) -> float:
        return self.load_fixed_ms + self.load_ms_per_mb * size_mb

    def download_ms(self, size_mb: float) -> float:
        return self.download_fixed_ms + self.download_ms_per_mb * size_mb


@dataclass(frozen=True)
class Fleet:
    """What every instance has: model memory (MB), invoke workers, concurrent loads, disk for artifacts (MB).

    The CLI and the benchmark set ``load_slots`` to ``workers``: the endpoint starts a load per missing
    model without a limit, and on a ``workers``-CPU instance about that many make progress at once.
    ``replicate_at`` (0: never): when a hit finds that many invokes queued on the least busy instance
    holding its model, a copy of the model is loaded on another instance (SageMaker may hold a busy model
    on several); later requests go to the least busy holder."""

    instance_mb: float
    workers: int = 4
    load_slots: int = 4
    disk_mb: float = math.inf
    replicate_at: int = 0


@dataclass(frozen=True)
class Stream:
    """Requests in time order: arrival times (s) and model indices; ``names`` and ``sizes_mb`` per model."""

    times_s: np.ndarray
    models: np.ndarray
    sizes_mb: np.ndarray
    names: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return float(self.times_s[-1] - self.times_s[0]) if len(self.times_s) > 1 else 0.0


def zipf_models(models: int, requests: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``requests`` model indices, rank r (1..models) with p ∝ 1/r^s, ranks mapped to models by a permutation."""
    weights = 1.0 / np.arange(1, models + 1) ** s
    model_of_rank = rng.permutation(models)
    return model_of_rank[rng.choice(models, size=requests, p=weights / weights.sum())]


def model_sizes(models: int, mb: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``models`` sizes in MB: all ``mb`` (sigma 0), else lognormal with median ``mb`` and shape ``sigma``."""
    if sigma <= 0:
        return np.full(models, float(mb))
    return mb * rng.lognormal(0.0, sigma, size=models)


def zipf_stream(
    models: int, requests: int, rate: float, s: float, model_mb: float, sigma: float = 0.0, seed: int = 0
) -> Stream:
    """Poisson arrivals at ``rate`` req/s, Zipf(s) over ``models`` models of ``model_sizes``; all from ``seed``."""
    rng = np.random.default_rng(seed)
    sizes = model_sizes(models, model_mb, sigma, rng)
    chosen = zipf_models(models, requests, s, rng)
    times = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    return Stream(times, chosen, sizes, tuple(f"m{i:04d}.tar.gz" for i in range(models)))


def read_trace(path: Path, sizes: dict[str, float] | None = None, default_mb: float = 200.0) -> Stream:
    """A CSV of ``time_s,target_model`` lines (a header line is skipped); sizes by name, else ``default_mb``."""
    names: dict[str, int] = {}
    times, models = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row or row[0].strip().startswith("#"):
                continue
            try:
                at = float(row[0])
            except ValueError:
                if not times:  # a header
                    continue
                raise ValueError(f"{path}: not a time in {row!r}") from None
            if len(row) < 2 or not row[1].strip():
                raise ValueError(f"{path}: no target_model in {row!r}")
            target = row[1].strip()
            models.append(names.setdefault(target, len(names)))
            times.append(at)
    order = np.argsort(np.asarray(times), kind="stable")
    by_index = list(names)
    size_of = sizes or {}
    return Stream(
        np.asarray(times, dtype=float)[order],
        np.asarray(models, dtype=int)[order],
        np.asarray([float(size_of.get(n, default_mb)) for n in by_index]),
        tuple(by_index),
    )


def read_sizes(path: Path) -> dict[str, float]:
    """A CSV of ``target_model,size_mb`` lines (a header line is skipped)."""
    sizes = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            try:
                sizes[row[0].strip()] = float(row[1])
            except (IndexError, ValueError):
                continue
    return sizes


@dataclass
class Resident:
    """A model loaded on an instance: when its last invoke ended, requests queued or running on it."""

    last_used: float
    in_flight: int = 0
    first_invoke: bool = True


@dataclass
class Instance:
    index: int
    fleet: Fleet
    used_mb: float = 0.0
    loaded: dict[int, Resident] = field(default_factory=dict)
    loading: dict[int, list[int]] = field(default_factory=dict)
    disk: OrderedDict[int, float] = field(default_factory=OrderedDict)
    load_queue: deque[tuple[int, float]] = field(default_factory=deque)
    loads_busy: int = 0
    invoke_queue: deque[tuple[int, int]] = field(default_factory=deque)
    workers_busy: int = 0

    @property
    def free_mb(self) -> float:
        return self.fleet.instance_mb - self.used_mb

    def busy(self) -> int:
        return self.workers_busy + len(self.invoke_queue) + self.loads_busy + len(self.load_queue)

    def idle_lru(self) -> list[int]:
        """Idle loaded models, least recently used first (ties by model index, for determinism)."""
        idle = [(r.last_used, m) for m, r in self.loaded.items() if r.in_flight == 0]
        return [m for _, m in sorted(idle)]

    def idle_mb(self, sizes: np.ndarray) -> float:
        return sum(float(sizes[m]) for m in self.loaded if self.loaded[m].in_flight == 0)


@dataclass
class Outcome:
    """Per request: hit (None: refused with 507), instance (-1: refused), latency (s; NaN when refused),
    whether it started a load, whether that load downloaded, and the models it evicted."""

    hits: list[bool | None]
    instances: list[int]
    latency_s: np.ndarray
    loaded: list[bool]
    downloaded: list[bool]
    evicted: list[list[int]]
    load_ms: list[float]
    """The load work (download, unloads, LoadModel) each request started, in ms; 0 for most."""

    @property
    def errors(self) -> int:
        return sum(1 for h in self.hits if h is None)


LOAD_DONE, INVOKE_DONE = 0, 1
"""Event kinds. At equal times completions come before arrivals: a model loaded at t serves a request at t."""


def simulate(stream: Stream, instances: int, fleet: Fleet, costs: Costs) -> Outcome:
    """Run ``stream`` through ``instances`` instances; every request ends answered or refused (507)."""
    sizes = stream.sizes_mb
    requested = np.unique(stream.models)
    too_big = [int(m) for m in requested if sizes[m] > fleet.instance_mb]
    if too_big:
        m = too_big[0]
        name = stream.names[m] if stream.names else f"model {m}"
        raise ModelTooBig(
            f"{len(too_big)} model(s) bigger than an instance ({fleet.instance_mb:g} MB), e.g. {name} of "
            f"{sizes[m]:.0f} MB: no number of instances serves them"
        )
    fleet_ = [Instance(i, fleet) for i in range(instances)]
    n = len(stream.models)
    out = Outcome([None] * n, [-1] * n, np.full(n, np.nan), [False] * n, [False] * n, [[] for _ in range(n)], [0.0] * n)
    done_at = np.full(n, np.nan)
    events: list[tuple[float, int, int, int, int]] = []  # (time, kind, seq, instance, payload)
    seq = 0

    def push(at: float, kind: int, inst: int, payload: int) -> None:
        nonlocal seq
        heapq.heappush(events, (at, kind, seq, inst, payload))
        seq += 1

    def start_invokes(inst: Instance, now: float) -> None:
        while inst.invoke_queue and inst.workers_busy < fleet.workers:
            request, model = inst.invoke_queue.popleft()
            resident = inst.loaded[model]
            service = costs.first_invoke_ms if resident.first_invoke else costs.invoke_ms
            resident.first_invoke = False
            inst.workers_busy += 1
            push(now + service / 1e3, INVOKE_DONE, inst.index, request)

    def start_loads(inst: Instance, now: float) -> None:
        while inst.load_queue and inst.loads_busy < fleet.load_slots:
            model, work_ms = inst.load_queue.popleft()
            inst.loads_busy += 1
            push(now + work_ms / 1e3, LOAD_DONE, inst.index, model)

    def enqueue_invoke(inst: Instance, request: int, model: int, now: float) -> None:
        inst.loaded[model].in_flight += 1
        inst.invoke_queue.append((request, model))
        start_invokes(inst, now)

    def place(model: int, exclude: Sequence[Instance] = ()) -> Instance | None:
        """The instance a load goes to: room first (most free), else the oldest idle LRU that can make room."""
        size = float(sizes[model])
        others = [i for i in fleet_ if i not in exclude]
        roomy = [i for i in others if i.free_mb >= size]
        if roomy:
            return min(roomy, key=lambda i: (-i.free_mb, i.index))
        candidates = []
        for inst in others:
            lru = inst.idle_lru()
            if lru and inst.free_mb + inst.idle_mb(sizes) >= size:
                candidates.append((inst.loaded[lru[0]].last_used, inst.index, inst))
        return min(candidates)[2] if candidates else None

    def start_load(request: int, model: int, now: float, exclude: Sequence[Instance] = ()) -> Instance | None:
        """Make room for ``model`` (its LRU idle models unloaded) and queue its load; None where none can."""
        inst = place(model, exclude)
        if inst is None:  # every instance is full of models in use: the endpoint answers 507
            return None
        size = float(sizes[model])
        victims = []
        for victim in inst.idle_lru():
            if inst.free_mb >= size:
                break
            inst.used_mb -= float(sizes[victim])
            del inst.loaded[victim]
            victims.append(victim)
        inst.used_mb += size
        out.evicted[request] = victims
        work_ms = len(victims) * costs.unload_ms + costs.load_ms(size)
        if model in inst.disk:
            inst.disk.move_to_end(model)
        else:
            work_ms += costs.download_ms(size)
            out.downloaded[request] = True
            inst.disk[model] = size
            while fleet.disk_mb < math.inf and sum(inst.disk.values()) > fleet.disk_mb:
                keep = (model, *inst.loaded, *inst.loading)
                drop = next((m for m in inst.disk if m not in keep), None)
                if drop is None:
                    break
                del inst.disk[drop]
        out.loaded[request] = True
        out.load_ms[request] = work_ms
        inst.loading[model] = []
        inst.load_queue.append((model, work_ms))
        start_loads(inst, now)
        return inst

    def arrive(request: int, now: float) -> None:
        model = int(stream.models[request])
        holders = [i for i in fleet_ if model in i.loaded]
        loading = next((i for i in fleet_ if model in i.loading), None)
        if holders:
            inst = min(holders, key=lambda i: (i.busy(), i.index))
            out.hits[request], out.instances[request] = True, inst.index
            enqueue_invoke(inst, request, model, now)
            if fleet.replicate_at and loading is None and len(inst.invoke_queue) >= fleet.replicate_at:
                start_load(request, model, now, exclude=holders)  # a copy; this request stays where it is
            return
        out.hits[request] = False
        if loading is None:
            loading = start_load(request, model, now)
            if loading is None:
                out.hits[request] = None
                return
        out.instances[request] = loading.index
        loading.loading[model].append(request)

    times = stream.times_s
    next_request = 0
    while next_request < n or events:
        if events and (next_request >= n or events[0][0] <= times[next_request]):
            now, kind, _, index, payload = heapq.heappop(events)
            inst = fleet_[index]
            if kind == LOAD_DONE:
                inst.loads_busy -= 1
                waiting = inst.loading.pop(payload)
                inst.loaded[payload] = Resident(last_used=now)
                for request in waiting:
                    enqueue_invoke(inst, request, payload, now)
                start_loads(inst, now)
            else:
                request = payload
                model = int(stream.models[request])
                inst.workers_busy -= 1
                resident = inst.loaded[model]
                resident.in_flight -= 1
                resident.last_used = now
                done_at[request] = now
                start_invokes(inst, now)
        else:
            arrive(next_request, float(times[next_request]))
            next_request += 1
    out.latency_s = done_at - times
    return out


def summary(stream: Stream, outcome: Outcome, warmup: int = 0, load_slots: int = 1) -> dict[str, Any]:
    """Hit ratio, misses/s, loads, evictions, p50/p99 latency (ms): all over the requests after the first
    ``warmup`` (the fleet starts empty; a steady state is what sizes it). ``load_utilization`` is the load
    work started per second over the fleet's ``load_slots``: above 1, loads queue without bound and the
    latencies grow with the length of the run."""
    hits = outcome.hits[warmup:]
    answered = [h for h in hits if h is not None]
    latency = outcome.latency_s[warmup:]
    latency = latency[~np.isnan(latency)] * 1e3
    span = float(stream.times_s[-1] - stream.times_s[warmup]) if len(stream.times_s) > warmup + 1 else 0.0
    misses = answered.count(False)
    hits_ms = outcome.latency_s[warmup:][[h is True for h in hits]] * 1e3

    def pct(values: np.ndarray, q: float) -> float:
        return float(np.percentile(values, q)) if values.size else math.nan

    return {
        "requests": len(hits),
        "hit_ratio": answered.count(True) / len(answered) if answered else 0.0,
        "misses": misses,
        "misses_per_s": misses / span if span > 0 else math.nan,
        "loads": sum(outcome.loaded[warmup:]),
        "evictions": sum(len(e) for e in outcome.evicted[warmup:]),
        "downloads": sum(outcome.downloaded[warmup:]),
        "errors": len(hits) - len(answered),
        "p50_ms": pct(latency, 50),
        "p99_ms": pct(latency, 99),
        "mean_ms": float(latency.mean()) if latency.size else math.nan,
        "hit_p99_ms": pct(hits_ms, 99),
        "load_utilization": sum(outcome.load_ms[warmup:]) / 1e3 / (span * load_slots) if span > 0 else math.nan,
    }


def sweep(stream: Stream, counts: Sequence[int], fleet: Fleet, costs: Costs, warmup: int = 0) -> list[dict[str, Any]]:
    """``summary`` per instance count."""
    return [
        {"instances": n, **summary(stream, simulate(stream, n, fleet, costs), warmup, n * fleet.load_slots)}
        for n in counts
    ]


def smallest_meeting(rows: list[dict[str, Any]], target_p99_ms: float) -> int | None:
    """The smallest instance count whose p99 is within the target and that refused nothing."""
    for row in rows:
        if row["p99_ms"] <= target_p99_ms and row["errors"] == 0:
            return int(row["instances"])
    return None


def ms(value: float) -> str:
    """Milliseconds as ``2.4 ms`` or ``2.19 s``."""
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


TABLE_HEAD = ("instances", "hit ratio", "misses/s", "loads (downloads)", "evictions", "507s", "load slots busy")
TABLE_HEAD += ("p50", "p99")


def table_row(r: dict[str, Any]) -> list[str]:
    """One instance count's figures, as the CLI prints them and fleet.md tabulates them."""
    return [
        str(r["instances"]),
        f"{r['hit_ratio']:.3f}",
        f"{r['misses_per_s']:.2f}",
        f"{r['loads']} ({r['downloads']})",
        str(r["evictions"]),
        str(r["errors"]),
        f"{r['load_utilization']:.0%}",
        ms(r["p50_ms"]),
        ms(r["p99_ms"]),
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep as a markdown table (bench/report.py's)."""
    from bench.report import table as markdown_table

    return markdown_table(TABLE_HEAD, [table_row(r) for r in rows], "r" * len(TABLE_HEAD))


def parse_range(text: str) -> list[int]:
    """``"1-8"`` -> 1..8, ``"1,2,4"`` -> [1, 2, 4]."""
    counts: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        counts += list(range(int(low), int(high or low) + 1))
    return counts


# --- the check against the real thing ----------------------------------------------------------------------

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
    import shutil

    from bench.common import request_body, write_model
    from bench.endpoint import delta, invoke, read_metrics, running, start_endpoint
    from torch_mme.endpoint.naming import model_name
    from torch_mme.tools.packaging import pack

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


# --- the benchmark: a documented default scenario, plus the check --------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """The documented default: the README's CLI example."""

    models: int = 1000
    model_mb: float = 200.0
    model_mb_sigma: float = 0.0
    instance_mb: float = 16000.0
    workers: int = 4
    rate: float = 50.0
    zipf: float = 1.1
    duration_s: float = 900.0
    warmup_s: float = 300.0
    seed: int = 1
    instances: tuple[int, ...] = tuple(range(1, 17))
    target_p99_ms: float = 500.0


FULL = Scenario()
QUICK = Scenario(duration_s=240.0, warmup_s=80.0, instances=(1, 2, 4, 6, 8, 10, 12, 14, 16))
CHECK_FULL = {"models": 20, "capacity": 5, "requests": 400}
CHECK_QUICK = {"models": 20, "capacity": 5, "requests": 100}


def scenario_stream(sc: Scenario) -> tuple[Stream, int]:
    """The scenario's stream and the number of requests before ``warmup_s``."""
    stream = zipf_stream(
        sc.models, int(sc.rate * sc.duration_s), sc.rate, sc.zipf, sc.model_mb, sc.model_mb_sigma, sc.seed
    )
    return stream, warmup_count(stream, sc.warmup_s)


def warmup_count(stream: Stream, warmup_s: float) -> int:
    """How many requests arrive in the first ``warmup_s`` seconds of ``stream``."""
    return int(np.searchsorted(stream.times_s, stream.times_s[0] + warmup_s)) if len(stream.times_s) else 0


def plot(rows: list[dict[str, Any]], target_p99_ms: float, path: Path) -> None:
    """p99 (log scale) and hit ratio against the number of instances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["instances"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.semilogy(ns, [r["p99_ms"] for r in rows], "o-", color="#2b7bba", label="p99")
    left.semilogy(ns, [r["p50_ms"] for r in rows], "s--", color="#9e9e9e", label="p50")
    left.axhline(target_p99_ms, color="#e05a4f", linestyle=":", label=f"target p99 {target_p99_ms:g} ms")
    left.set_xlabel("instances")
    left.set_ylabel("latency (ms)")
    left.legend(fontsize=8)
    right.plot(ns, [r["hit_ratio"] for r in rows], "o-", color="#2b7bba")
    right.set_xlabel("instances")
    right.set_ylabel("hit ratio")
    right.set_ylim(0, 1.02)
    for ax in (left, right):
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    fig.suptitle("fleet simulation: latency and hit ratio vs instances", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    from bench.report import document
    from bench.report import table as markdown_table

    sc, c, rows, chk = result["scenario"], result["costs"], result["rows"], result["check"]
    best = result["smallest_meeting_target"]
    sizes = (
        f"{sc['model_mb']:g} MB each"
        if not sc["model_mb_sigma"]
        else (f"lognormal, median {sc['model_mb']:g} MB, sigma {sc['model_mb_sigma']:g}")
    )
    cfg = chk["config"]
    same = not chk["hit_mismatches"] and not chk["eviction_mismatches"] and not chk["errors"]
    lat = chk["latency"]

    def cell(s: dict[str, float] | None) -> str:
        return f"{s['p50_ms']:.1f} ms / {s['mean_ms']:.1f} ms (n {s['n']})" if s else "-"

    check = [
        ["hit ratio", f"**{chk['hit_ratio_real']:.3f}**", f"**{chk['hit_ratio_sim']:.3f}**", ""],
        ["requests whose hit/miss differs", len(chk["hit_mismatches"]), "", ""],
        ["requests whose evicted models differ", len(chk["eviction_mismatches"]), "", ""],
        ["evictions", chk["evictions_real"], chk["evictions_sim"], ""],
        ["most models loaded at once", chk["max_loaded_real"], cfg["capacity"], ""],
        *(
            [f"{kind} latency p50 / mean", cell(lat[f"real_{kind}"]), cell(lat[f"sim_{kind}"])]
            + [cell(lat[f"sim_this_run_costs_{kind}"])]
            for kind in ("hit", "miss")
        ),
        ["errors", len(chk["errors"]), "", ""],
    ]
    this_run, default = chk["costs_this_run"], chk["costs"]
    return document(
        "fleet: how many instances? (simulated SageMaker MME fleet, `bench/fleet.py`)",
        result,
        table(rows),
        (
            f"**Smallest fleet meeting p99 <= {sc['target_p99_ms']:g} ms: {best} instances.**"
            if best
            else f"**No fleet of {rows[0]['instances']}-{rows[-1]['instances']} instances meets p99 <= "
            f"{sc['target_p99_ms']:g} ms.**"
        ),
        "'load slots busy' is the load work (download + unloads + LoadModel) started per second over all load "
        "slots: near 100% loads queue without bound, requests wait for their model (and misses that find every "
        "instance's memory held by loads in progress are refused: 507s), and the latencies grow with the length "
        "of the run: the fleet is overloaded by misses, not by invokes. p99 stays at a miss's cost until fewer "
        "than 1% of requests miss; with room for every model the misses left are first requests for rare models "
        "(loads = downloads), which only a longer warm-up removes.",
        "![p99 and hit ratio vs instances](fleet.png)",
        f"## The check: one simulated instance vs `torch-mme endpoint` + `serve`, {cfg['requests']} requests",
        f"{cfg['models']} copies of a tiny scripted model, each declaring {cfg['declared_mb']} MB "
        f"(`torch-mme.json`); serve's budget {cfg['budget_mb']} MB (headroom {cfg['headroom_mb']} MB) holds "
        f"{cfg['capacity']}, the simulated instance {cfg['sim_instance_mb']:g} MB; Zipf({cfg['zipf']:g}) "
        f"seed {cfg['seed']}, one boto3 client, one request at a time. Real hit or miss: the endpoint's "
        "`sagemaker_ModelCacheHit` per request; real evictions: serve's model list before and after.",
        markdown_table(["figure", "real endpoint", "simulator", "simulator, this run's costs"], check),
        f"This run's costs (the endpoint's own metrics over the check): LoadModel "
        f"{this_run['load_fixed_ms']:.0f} ms, unload {this_run['unload_ms']:.0f} ms, "
        f"download {this_run['download_fixed_ms']:.1f} ms, hit {this_run['invoke_ms']:.1f} "
        f"ms at the client (the default costs: {default['load_fixed_ms']:.0f}, {default['unload_ms']:.0f}, "
        f"{default['download_fixed_ms']:.1f}, {default['invoke_ms']:.1f} ms).",
        (
            "**Request by request the same**: every hit and miss, and every unloaded model, as the simulator said."
            if same
            else "**The sequences differ** (first differing requests: "
            f"{(chk['hit_mismatches'] + chk['eviction_mismatches'])[:10]}); see `check.sequences` in fleet.json."
        ),
        "Real latencies are measured at the client (the metrics and model-list reads between requests are not "
        "timed); simulated ones are the costs above. The simulator's miss leaves out the refused LoadModel "
        "(507) before each eviction and the client's own cost.",
        f"Whole run: {result['wall_s']:.0f} s (the check {chk['wall_s']:.0f} s).",
        facts=[
            f"scenario: {sc['models']} models ({sizes}); instances of {sc['instance_mb']:g} MB for models, "
            f"{sc['workers']} invoke workers and {result['load_slots']} load slots each; Zipf({sc['zipf']:g}) "
            f"requests, Poisson arrivals at {sc['rate']:g} req/s for {sc['duration_s']:g} s, seed {sc['seed']}; "
            f"figures over the requests after the first {sc['warmup_s']:g} s (the fleet starts empty)",
            f"costs: invoke {c['invoke_ms']:.2f} ms, first invoke after a load {c['first_invoke_ms']:.1f} ms, "
            f"LoadModel {c['load_fixed_ms']:.0f} ms + {c['load_ms_per_mb']:g} ms/MB, unload {c['unload_ms']:.0f} ms, "
            f"download {c['download_fixed_ms']:.1f} ms + {c['download_ms_per_mb']:g} ms/MB; fixed parts from "
            f"{c['source']} (per-MB: ~{1000 / c['download_ms_per_mb']:.0f} MB/s download, "
            f"~{1000 / c['load_ms_per_mb']:.0f} MB/s load)",
        ],
    )


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Simulate the default scenario per instance count, run the check, write ``fleet.{json,md,png}``."""
    import tempfile

    from bench.common import finish, new_result, write_results

    sc = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("fleet", quick)
    costs = Costs.measured()
    fleet = Fleet(instance_mb=sc.instance_mb, workers=sc.workers, load_slots=sc.workers)
    stream, warmup = scenario_stream(sc)
    print(f"fleet: {len(stream.models)} requests, instances {list(sc.instances)}", file=sys.stderr)
    rows = sweep(stream, sc.instances, fleet, costs, warmup)
    result.update(
        scenario=asdict(sc),
        load_slots=fleet.load_slots,
        costs=asdict(costs),
        rows=rows,
        smallest_meeting_target=smallest_meeting(rows, sc.target_p99_ms),
    )
    print("\n".join(table(rows)), file=sys.stderr)
    check = CHECK_QUICK if quick else CHECK_FULL
    print(f"check against the real endpoint: {check}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="torch-mme-fleet-") as tmp:
        result["check"] = check_against_endpoint(Path(tmp), costs=costs, **check)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, sc.target_p99_ms, out / "fleet.png")
    finish(result, began)
    write_results(result, markdown(result), out)
    return result


# --- the command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Simulate a SageMaker multi-model endpoint fleet per instance count and print the smallest "
        "count whose p99 meets a target. Costs default to this project's measured figures (bench/results/"
        "endpoint.json) with assumed per-MB download and load rates.",
    )
    parser.add_argument("--models", type=int, default=FULL.models, help="number of models (Zipf stream)")
    parser.add_argument("--model-mb", type=float, default=FULL.model_mb, help="model size (median when lognormal)")
    parser.add_argument("--model-mb-sigma", type=float, default=0.0, help="lognormal sigma of sizes (0: all equal)")
    parser.add_argument("--sizes", type=Path, help="CSV target_model,size_mb (with --trace)")
    parser.add_argument("--instance-mb", type=float, default=FULL.instance_mb, help="memory for models per instance")
    parser.add_argument("--workers", type=int, default=FULL.workers, help="invoke workers per instance")
    parser.add_argument("--load-slots", type=int, help="concurrent loads per instance (default: --workers)")
    parser.add_argument("--disk-mb", type=float, default=math.inf, help="disk for artifacts per instance")
    parser.add_argument(
        "--replicate-at", type=int, default=0, help="queued invokes that load a copy elsewhere (0: never)"
    )
    parser.add_argument("--rate", type=float, default=FULL.rate, help="requests per second (Poisson)")
    parser.add_argument("--zipf", type=float, default=FULL.zipf, help="Zipf exponent s")
    parser.add_argument("--duration-s", type=float, default=FULL.duration_s, help="length of the Zipf stream")
    parser.add_argument("--warmup-s", type=float, default=FULL.warmup_s, help="left out of the figures")
    parser.add_argument("--seed", type=int, default=FULL.seed)
    parser.add_argument("--instances", default="1-8", help="instance counts: 1-8 or 1,2,4")
    parser.add_argument("--trace", type=Path, help="CSV of time_s,target_model lines instead of Zipf")
    parser.add_argument("--target-p99-ms", type=float, default=FULL.target_p99_ms)
    parser.add_argument("--invoke-ms", type=float, help="invoke service time (default: measured)")
    parser.add_argument("--load-ms", type=float, help="LoadModel fixed part (default: measured)")
    parser.add_argument("--load-ms-per-mb", type=float, default=LOAD_MS_PER_MB)
    parser.add_argument("--unload-ms", type=float, help="unload time (default: measured)")
    parser.add_argument("--download-ms-per-mb", type=float, default=DOWNLOAD_MS_PER_MB)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    measured = Costs.measured()
    costs = Costs(
        invoke_ms=measured.invoke_ms if args.invoke_ms is None else args.invoke_ms,
        first_invoke_ms=measured.first_invoke_ms,
        load_fixed_ms=measured.load_fixed_ms if args.load_ms is None else args.load_ms,
        load_ms_per_mb=args.load_ms_per_mb,
        unload_ms=measured.unload_ms if args.unload_ms is None else args.unload_ms,
        download_fixed_ms=measured.download_fixed_ms,
        download_ms_per_mb=args.download_ms_per_mb,
        source=measured.source,
    )
    fleet = Fleet(args.instance_mb, args.workers, args.load_slots or args.workers, args.disk_mb, args.replicate_at)
    if args.trace:
        try:
            stream = read_trace(args.trace, read_sizes(args.sizes) if args.sizes else None, args.model_mb)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        if not len(stream.models):
            parser.error(f"{args.trace}: no requests")
    else:
        requests = int(args.rate * args.duration_s)
        stream = zipf_stream(args.models, requests, args.rate, args.zipf, args.model_mb, args.model_mb_sigma, args.seed)
    warmup = warmup_count(stream, args.warmup_s)
    if warmup >= len(stream.models):
        parser.error(f"--warmup-s {args.warmup_s:g} leaves no request of the {stream.duration_s:.0f} s stream")
    try:
        rows = sweep(stream, parse_range(args.instances), fleet, costs, warmup)
    except ModelTooBig as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{len(stream.models)} requests over {stream.duration_s:.0f} s ({warmup} warm-up left out), "
        f"{len(stream.sizes_mb)} models, {fleet.instance_mb:g} MB instances; costs: {costs.source}"
    )
    print("\n".join(table(rows)))
    best = smallest_meeting(rows, args.target_p99_ms)
    if best is None:
        print(f"no instance count in {args.instances} meets p99 <= {args.target_p99_ms:g} ms")
    else:
        print(f"smallest instance count meeting p99 <= {args.target_p99_ms:g} ms: {best}")
    if args.json:
        args.json.write_text(json.dumps({"costs": asdict(costs), "rows": rows, "smallest": best}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
