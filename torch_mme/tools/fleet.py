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

``tests/support/fleet_check.py`` runs one simulated instance and a real ``torch-mme endpoint`` + ``serve``
on the same sequential request stream and compares the hit/miss sequences request by request.

CLI: ``python -m torch_mme.tools.fleet`` (or ``python -m bench.fleet``) ``--models 1000 --model-mb 200
--instance-mb 16000 --rate 50 --zipf 1.1 --instances 1-8 [--trace FILE] [--target-p99-ms 500]``.
``python -m bench --only fleet`` (bench/fleet.py) writes ``bench/results/fleet.{json,md}`` and ``fleet.png``
for the default scenario plus the check. A developer tool (in the repository: the measured costs are read
from bench/results/ when it is there).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import sys
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository (the measured costs are in its bench/results/ when there is one)."""
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
    """The sweep as a markdown table, as the CLI prints it."""
    rule = "|" + "---:|" * len(TABLE_HEAD)
    return ["| " + " | ".join(TABLE_HEAD) + " |", rule, *("| " + " | ".join(table_row(r)) + " |" for r in rows)]


def parse_range(text: str) -> list[int]:
    """``"1-8"`` -> 1..8, ``"1,2,4"`` -> [1, 2, 4]."""
    counts: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        counts += list(range(int(low), int(high or low) + 1))
    return counts


# --- the default scenario (the README's example; bench/fleet.py simulates it) ------------------------------


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


def scenario_stream(sc: Scenario) -> tuple[Stream, int]:
    """The scenario's stream and the number of requests before ``warmup_s``."""
    stream = zipf_stream(
        sc.models, int(sc.rate * sc.duration_s), sc.rate, sc.zipf, sc.model_mb, sc.model_mb_sigma, sc.seed
    )
    return stream, warmup_count(stream, sc.warmup_s)


def warmup_count(stream: Stream, warmup_s: float) -> int:
    """How many requests arrive in the first ``warmup_s`` seconds of ``stream``."""
    return int(np.searchsorted(stream.times_s, stream.times_s[0] + warmup_s)) if len(stream.times_s) else 0


# --- the command line ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torch_mme.tools.fleet",
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
