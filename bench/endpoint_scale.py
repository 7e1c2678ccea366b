"""The local endpoint at scale: stores of 100, 1,000 and 10,000 models under Zipf traffic, side by side in one run.

Every model is the same tiny ``code/inference.py`` (no weights; its answer is
the container-side name of the folder it was loaded from, so every answer
shows which model served it) packed ONCE; each target in a store is a copy of
that ``.tar.gz``. Its ``torch-mme.json`` declares ``memory_mb``, so admission
counts every model at exactly that size and serve's memory budget holds a fixed
number of them (``capacity``) whatever serve's own processes weigh within a
wide margin. Each endpoint's models root starts with an earlier run's
artifacts, another version of every model of its store, extracted: its disk
cache holds as many artifacts as its store has models, as on an instance that
has served the store for a while, and every model the stream asks for is
downloaded beside them.

One ``torch-mme endpoint`` per store size, each starting its own
``torch-mme serve`` as a user does (``LocalEndpoint`` without a container URL;
the budget reaches serve through the environment). The three run at once and
every phase sends its requests round-robin across them, one request at a time,
so the sizes are compared on the same machine at the same moments:

1. **warm-up**: ``warmup`` requests for one target (1 miss, then hits, so the
   JVM in MMS is warm).
2. **Zipf stream**: ``requests`` requests per endpoint through boto3's
   ``invoke_endpoint(TargetModel=...)``, ranks drawn from Zipf(1.2) over the
   store with one seed, mapped to models by a permutation. Whether each request
   was a hit is what the endpoint itself logged for it (its
   ``metric ModelCacheHit=`` line; its ``loaded``/``unloading`` lines give the
   models it held after each request), cross-checked against its ``/metrics``
   totals. Compared with an ideal LRU (an ``OrderedDict``) over the same
   requests (warm-up included) with the largest number of models the endpoint
   held at once.
3. **hits only**: ``hits`` requests per endpoint and client (raw keep-alive
   ``http.client``, then boto3) cycling over the (up to four) models used last,
   which an LRU holds; ``/metrics`` must count them all as hits.

The endpoint's own cost is the CPU time of its process (the sum of its
threads' run time from schedstat, in ns; serve excluded: a separate process)
over a phase, divided by the phase's requests: per hit from phase 3, per miss from phase 2 less its hits
at phase 3's cost. Flat means the 10,000-model figure within 1.25x of the
100-model one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from botocore.exceptions import BotoCoreError, ClientError

from bench.common import JSON_TYPE, finish, new_result, summarize, tail, write_results
from bench.report import header_lines, table
from tests.support.endpoint import read_metrics
from tests.support.models import ECHO_OWN_NAME
from tests.support.traffic import lru_hits, zipf_stream
from torch_mme.endpoint.naming import model_name
from torch_mme.tools.local_server import LocalEndpoint
from torch_mme.tools.packaging import pack

MB = 2**20
ENDPOINT_NAME = "local"
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
WARMUP_TARGET = "warmup.tar.gz"
ZIPF_EXPONENT = 1.2
ZIPF_SEED = 20261201
MODEL_MB = 200
"""Each model declares this much; admission counts it at that (its real USS is ~20 MB)."""
BASE_MB = 300
"""Serve's own processes as admission counts them: ~240 MB with models loaded, ~370 MB with none (the fork
template's pages are its own until a model shares them). The budget leaves half a model spare around this, so
the capacity is the same for any base between 200 and 400 MB."""
HEADROOM_MB = 64
FLAT_GOAL = 1.25
_HIT = re.compile(r"torch_mme\.endpoint\.metrics - metric ModelCacheHit=([01])\.000 target=(.*)$")
_LOADED = re.compile(r"torch_mme\.endpoint - loaded \S+ as \S+$")
_UNLOADED = re.compile(r"torch_mme\.endpoint - (?:container has no room for|invoking) .*; unloading \S+$")
_LOST = re.compile(r"torch_mme\.endpoint - container no longer has \S+; loading it again$")


@dataclass(frozen=True)
class Sizes:
    stores: tuple[int, ...]
    capacity: int
    warmup: int
    requests: int
    hits: int


FULL = Sizes(stores=(100, 1000, 10_000), capacity=20, warmup=200, requests=600, hits=1500)
QUICK = Sizes(stores=(100, 1000), capacity=5, warmup=50, requests=60, hits=200)


def target(i: int) -> str:
    return f"m{i:05d}.tar.gz"


def endpoint_log(path: Path) -> list[dict[str, Any]]:
    """Per request the endpoint saw, in order: its target, whether it logged a hit, the models it held after."""
    requests: list[dict[str, Any]] = []
    held = 0
    for line in path.read_text(errors="replace").splitlines():
        if match := _HIT.search(line):
            requests.append({"target": match.group(2), "hit": match.group(1) == "1", "held": held})
        elif _LOADED.search(line):
            held += 1
        elif _UNLOADED.search(line) or _LOST.search(line):
            held -= 1
        if requests:
            requests[-1]["held"] = held
    return requests


def cpu_s(process: psutil.Process) -> float:
    """CPU seconds the process's live threads have run: the sum of their schedstat run times, which the kernel
    counts in ns (``/proc/<pid>/stat`` rounds to 10 ms ticks). A thread that ends takes its time with it; the
    endpoint's (its executor's) live as long as it does."""
    total = 0
    for thread in process.threads():
        with contextlib.suppress(OSError), open(f"/proc/{process.pid}/task/{thread.id}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def ticks_cpu_s(process: psutil.Process) -> float:
    """User + system seconds as ``/proc/<pid>/stat`` counts them (dead threads included), a cross-check."""
    times = process.cpu_times()
    return times.user + times.system


class Side:
    """One store size: its store, its endpoint (which starts its own serve), its clients and its log."""

    def __init__(
        self, size: int, base: Path, artifact: Path, files: dict[str, bytes], env: dict[str, str], sizes: Sizes
    ) -> None:
        self.size = size
        self.store = base / f"store-{size}"
        self.store.mkdir()
        shutil.copyfile(artifact, self.store / WARMUP_TARGET)
        for i in range(size):
            shutil.copyfile(artifact, self.store / target(i))
        models_root = base / f"models-{size}"
        for i in range(size):  # an earlier run's artifacts: another version of every model, extracted
            extracted = models_root / model_name(f"earlier/{target(i)}") / "model"
            (extracted / "code").mkdir(parents=True)
            for name, data in files.items():
                (extracted / name).write_bytes(data)
        self.log_path = base / f"endpoint-{size}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.endpoint = LocalEndpoint(str(self.store), str(models_root), env=env, log=self._log, start_timeout=600)
        self.stream = [target(i) for i in zipf_stream(size, sizes.requests, ZIPF_EXPONENT, ZIPF_SEED)]
        self.errors: list[dict[str, Any]] = []
        self.client: Any = None
        self.conn: http.client.HTTPConnection | None = None
        self.process: psutil.Process | None = None

    def start(self) -> None:
        began = time.perf_counter()
        self.endpoint.start()
        self.start_s = time.perf_counter() - began
        assert self.endpoint.process is not None
        self.process = psutil.Process(self.endpoint.process.pid)
        self.client = self.endpoint.client()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.endpoint.port, timeout=600)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.endpoint.stop(timeout=60)
        self._log.close()

    def boto3(self, target: str) -> float:
        """One invoke through boto3; the seconds it took, its failure recorded in ``errors``."""
        began = time.perf_counter()
        try:
            answer = self.client.invoke_endpoint(
                EndpointName=ENDPOINT_NAME, TargetModel=target, ContentType=JSON_TYPE, Accept=JSON_TYPE, Body=b"{}"
            )
            data = answer["Body"].read()
            status = answer["ResponseMetadata"]["HTTPStatusCode"]
        except ClientError as exc:
            data, status = str(exc).encode(), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        except BotoCoreError as exc:
            data, status = f"{type(exc).__name__}: {exc}".encode(), 0
        seconds = time.perf_counter() - began
        self._check(target, status, data)
        return seconds

    def raw(self, target: str) -> float:
        """One invoke as a keep-alive HTTP POST (no client library's own cost)."""
        assert self.conn is not None
        headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE, TARGET_HEADER: target}
        began = time.perf_counter()
        self.conn.request("POST", f"/endpoints/{ENDPOINT_NAME}/invocations", body=b"{}", headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        seconds = time.perf_counter() - began
        self._check(target, response.status, data)
        return seconds

    def _check(self, target: str, status: int, data: bytes) -> None:
        try:
            right = status == 200 and json.loads(data) == {"model": model_name(target)}
        except ValueError:
            right = False
        if not right:
            self.errors.append({"target": target, "status": status, "answer": data[:300].decode(errors="replace")})


@contextlib.contextmanager
def started(sides: list[Side]) -> Iterator[None]:
    """Start every side's endpoint at once (each starts its serve); stop them all whatever happens."""
    failures: list[BaseException] = []

    def start(side: Side) -> None:
        try:
            side.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after every side stopped
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(side,)) for side in sides]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        yield
    except BaseException:
        for side in sides:
            print(f"--- endpoint {side.size} log (last lines) ---\n{tail(side.log_path)}", file=sys.stderr)
        raise
    finally:
        for side in sides:
            side.stop()


def round_robin(sides: list[Side], requests: int, send: Any, what: str) -> dict[int, dict[str, Any]]:
    """``requests`` per side, request i of every side before request i + 1 of any; per side its latencies
    (seconds) and the endpoint process's CPU seconds over the phase."""
    cpu = {side.size: cpu_s(side.process) for side in sides}
    ticks = {side.size: ticks_cpu_s(side.process) for side in sides}
    latency: dict[int, list[float]] = {side.size: [] for side in sides}
    began = time.perf_counter()
    for i in range(requests):
        for side in sides:
            latency[side.size].append(send(side, i))
        if (i + 1) % 100 == 0:
            print(f"  {what}: {i + 1}/{requests} per endpoint, {time.perf_counter() - began:.0f} s", file=sys.stderr)
    wall = time.perf_counter() - began
    return {
        side.size: {
            "latency_s": latency[side.size],
            "cpu_s": cpu_s(side.process) - cpu[side.size],
            "cpu_s_ticks": ticks_cpu_s(side.process) - ticks[side.size],
            "wall_s": wall,
        }
        for side in sides
    }


def measure(sides: list[Side], sizes: Sizes) -> dict[int, dict[str, Any]]:
    """The three phases on every side; per side the figures the report shows."""
    round_robin(sides, sizes.warmup, lambda side, i: side.boto3(WARMUP_TARGET), "warm-up")
    before = {side.size: read_metrics(side.endpoint) for side in sides}
    seen_before = {side.size: len(endpoint_log(side.log_path)) for side in sides}
    stream = round_robin(sides, sizes.requests, lambda side, i: side.boto3(side.stream[i]), "Zipf stream")
    after_stream = {side.size: read_metrics(side.endpoint) for side in sides}
    n = min(4, sizes.capacity)  # the models used last, which an LRU holds
    recent = {side.size: list(dict.fromkeys(reversed(side.stream)))[:n] for side in sides}
    raw = round_robin(sides, sizes.hits, lambda side, i: side.raw(recent[side.size][i % n]), "hits, raw HTTP")
    boto3 = round_robin(sides, sizes.hits, lambda side, i: side.boto3(recent[side.size][i % n]), "hits, boto3")
    results = {}
    for side in sides:
        size = side.size
        end = read_metrics(side.endpoint)
        logged = endpoint_log(side.log_path)
        warmup, streamed = logged[: seen_before[size]], logged[seen_before[size] : seen_before[size] + sizes.requests]
        if [r["target"] for r in streamed] != side.stream:
            raise RuntimeError(f"store {size}: the endpoint's log does not follow the stream sent")
        hit = [r["hit"] for r in streamed]
        held = [r["held"] for r in logged[: seen_before[size] + sizes.requests]]
        capacity = max(held)
        everything = [r["target"] for r in warmup] + side.stream
        ideal = lru_hits(everything, capacity)[len(warmup) :]
        ideal_below = lru_hits(everything, capacity - 1)[len(warmup) :]

        def delta(name: str, a: dict[str, float], b: dict[str, float]) -> float:
            return a.get(f"sagemaker_{name}", 0.0) - b.get(f"sagemaker_{name}", 0.0)

        stream_hits = sum(hit)
        counted = (
            delta("ModelCacheHit_sum", after_stream[size], before[size]),
            delta("ModelCacheHit_count", after_stream[size], before[size]),
        )
        if counted != (stream_hits, sizes.requests):
            raise RuntimeError(
                f"store {size}: the endpoint's /metrics count (hits, requests) {counted}, its log "
                f"{(stream_hits, sizes.requests)}"
            )
        hit_phase = (
            delta("ModelCacheHit_sum", end, after_stream[size]),
            delta("ModelCacheHit_count", end, after_stream[size]),
        )
        if hit_phase != (2 * sizes.hits, 2 * sizes.hits):
            raise RuntimeError(f"store {size}: not every request of the hits-only phase was a hit: {hit_phase}")
        misses = sizes.requests - stream_hits
        cpu_hit = raw[size]["cpu_s"] / sizes.hits
        cpu_hit_boto3 = boto3[size]["cpu_s"] / sizes.hits
        lat = stream[size]["latency_s"]
        first_fill = held[len(warmup) :].index(capacity) if capacity in held[len(warmup) :] else len(streamed)
        results[size] = {
            "store_size": size,
            "endpoint_start_s": side.start_s,
            "errors": side.errors,
            "stream": {
                "requests": sizes.requests,
                "distinct_models": len(set(side.stream)),
                "hits": stream_hits,
                "misses": misses,
                "hit_ratio": stream_hits / sizes.requests,
                "loads": delta("ModelLoadingTime_count", after_stream[size], before[size]),
                "downloads": delta("ModelDownloadingTime_count", after_stream[size], before[size]),
                "evictions": delta("ModelEvictions_total", after_stream[size], before[size]),
                "capacity_max_held": capacity,
                "held_counts_after_first_fill": sorted(set(held[len(warmup) + first_fill :])),
                "ideal_lru_hit_ratio": sum(ideal) / sizes.requests,
                "ideal_lru_capacity_minus_1_hit_ratio": sum(ideal_below) / sizes.requests,
                "disagreements_with_ideal_lru": sum(1 for a, b in zip(hit, ideal, strict=True) if a != b),
                "cpu_s": stream[size]["cpu_s"],
                "cpu_s_ticks": stream[size]["cpu_s_ticks"],
                "cpu_ms_per_request": stream[size]["cpu_s"] / sizes.requests * 1e3,
                "cpu_ms_per_miss": (stream[size]["cpu_s"] - stream_hits * cpu_hit) / max(misses, 1) * 1e3,
                "latency_hit": summarize([s for s, h in zip(lat, hit, strict=True) if h], 1e3, "ms"),
                "latency_miss": summarize([s for s, h in zip(lat, hit, strict=True) if not h], 1e3, "ms"),
                "wall_s": stream[size]["wall_s"],
            },
            "hits_raw": {
                **summarize(raw[size]["latency_s"], 1e3, "ms"),
                "cpu_ms_per_request": cpu_hit * 1e3,
                "cpu_ms_per_request_ticks": raw[size]["cpu_s_ticks"] / sizes.hits * 1e3,
            },
            "hits_boto3": {**summarize(boto3[size]["latency_s"], 1e3, "ms"), "cpu_ms_per_request": cpu_hit_boto3 * 1e3},
            "endpoint_rss_mb_at_end": side.process.memory_info().rss / MB,
            "hit_sequence": hit,
            "ideal_lru_sequence": ideal,
        }
    return results


def ratios(results: dict[int, dict[str, Any]]) -> dict[str, float]:
    """Largest store over smallest, for each per-request cost."""
    small, large = results[min(results)], results[max(results)]
    return {
        "cpu_per_hit_raw": large["hits_raw"]["cpu_ms_per_request"] / small["hits_raw"]["cpu_ms_per_request"],
        "cpu_per_hit_boto3": large["hits_boto3"]["cpu_ms_per_request"] / small["hits_boto3"]["cpu_ms_per_request"],
        "cpu_per_miss": large["stream"]["cpu_ms_per_miss"] / small["stream"]["cpu_ms_per_miss"],
        "hit_p50_raw": large["hits_raw"]["p50"] / small["hits_raw"]["p50"],
        "hit_p50_boto3": large["hits_boto3"]["p50"] / small["hits_boto3"]["p50"],
        "stream_hit_p50": large["stream"]["latency_hit"]["p50"] / small["stream"]["latency_hit"]["p50"],
        "endpoint_rss": large["endpoint_rss_mb_at_end"] / small["endpoint_rss_mb_at_end"],
    }


def markdown(result: dict[str, Any]) -> str:
    cfg, per = result["config"], result["stores"]
    sizes = [str(s) for s in cfg["stores"]]
    head = ["figure", *(f"{int(s):,} models" for s in sizes)]

    def line(label: str, fmt: Any) -> list[str]:
        return [label, *(fmt(per[s]) for s in sizes)]

    r = result["ratios"]
    big, small = f"{int(sizes[-1]):,}", f"{int(sizes[0]):,}"
    lines = [
        f"# endpoint at scale: stores of {', '.join(f'{int(s):,}' for s in sizes)} models, Zipf({ZIPF_EXPONENT})",
        "",
        *header_lines(result),
        f"- model: `code/inference.py` answering its own name (every answer checked), packed once "
        f"({cfg['artifact_bytes']} bytes .tar.gz) and copied to every target of a folder store; "
        f"`torch-mme.json` declares {MODEL_MB} MB, and serve's budget is {cfg['budget_mb']} MB "
        f"(= {BASE_MB} MB for serve's own processes + ({cfg['capacity']} + 0.5) x {MODEL_MB} MB + "
        f"{HEADROOM_MB} MB headroom), so {cfg['capacity']} models fit",
        "- one `torch-mme endpoint` per store size, each starting its own `torch-mme serve`; they run at once "
        "and every phase sends round-robin across them, one request at a time",
        f"- per endpoint: {cfg['warmup']} warm-up requests (one target), then **{cfg['requests']} requests of a "
        f"Zipf({ZIPF_EXPONENT}) stream** over its store through boto3 (seed {ZIPF_SEED}), then {cfg['hits']} hits "
        "through raw keep-alive HTTP and as many through boto3, cycling over the (up to 4) models used last",
        "- each endpoint's models root starts with an earlier run's artifacts: another version of every model of its "
        "store, extracted (as on an instance that has served that store for a while), so its disk cache holds as "
        "many artifacts as the store has models, and every model the stream asks for is a download beside them",
        "- hit or miss: the endpoint's own `metric ModelCacheHit` log line for each request (its /metrics totals "
        "agree); models held: its `loaded` / `unloading` log lines; the ideal LRU replays the same requests, "
        "warm-up included, with the most models the endpoint held at once",
        "- CPU: the endpoint process's run time (the sum of its threads' schedstat, in ns; serve is another process) "
        "over a phase / its requests; per miss = (the stream's CPU - its hits x the hits-only phase's CPU per hit) / "
        "misses",
        "",
        "## Hit ratio against an ideal LRU, and errors",
        "",
        *table(
            head,
            [
                line("errors (wrong answer or not 200, all phases)", lambda p: f"**{len(p['errors'])}**"),
                line("distinct models requested", lambda p: str(p["stream"]["distinct_models"])),
                line("most models held at once (capacity)", lambda p: str(p["stream"]["capacity_max_held"])),
                line(
                    "models held after first full",
                    lambda p: ", ".join(map(str, p["stream"]["held_counts_after_first_fill"])),
                ),
                line("**hit ratio, endpoint**", lambda p: f"**{p['stream']['hit_ratio']:.3f}**"),
                line(
                    "**hit ratio, ideal LRU of that capacity**",
                    lambda p: f"**{p['stream']['ideal_lru_hit_ratio']:.3f}**",
                ),
                line(
                    "hit ratio, ideal LRU of one model less",
                    lambda p: f"{p['stream']['ideal_lru_capacity_minus_1_hit_ratio']:.3f}",
                ),
                line(
                    "requests where endpoint and ideal LRU disagree",
                    lambda p: str(p["stream"]["disagreements_with_ideal_lru"]),
                ),
                line(
                    "misses / LoadModels / downloads / evictions",
                    lambda p: "{misses} / {loads:g} / {downloads:g} / {evictions:g}".format(**p["stream"]),
                ),
            ],
        ),
        "",
        "## The endpoint's own cost per request",
        "",
        *table(
            head,
            [
                line("**CPU per hit, raw HTTP**", lambda p: f"**{p['hits_raw']['cpu_ms_per_request']:.3f} ms**"),
                line("CPU per hit, boto3", lambda p: f"{p['hits_boto3']['cpu_ms_per_request']:.3f} ms"),
                line(
                    "**CPU per miss** (download, extract, LoadModel, unload)",
                    lambda p: f"**{p['stream']['cpu_ms_per_miss']:.2f} ms**",
                ),
                line(
                    "CPU per request of the stream (mixes hits and misses)",
                    lambda p: f"{p['stream']['cpu_ms_per_request']:.2f} ms",
                ),
                line("**p50 hit, raw HTTP**", lambda p: f"**{p['hits_raw']['p50']:.2f} ms**"),
                line("p50 hit, boto3", lambda p: f"{p['hits_boto3']['p50']:.2f} ms"),
                line("p99 hit, raw HTTP", lambda p: f"{p['hits_raw']['p99']:.2f} ms"),
                line("p50 hit within the stream (boto3)", lambda p: f"{p['stream']['latency_hit']['p50']:.2f} ms"),
                line("p50 miss within the stream (boto3)", lambda p: f"{p['stream']['latency_miss']['p50']:.0f} ms"),
                line("endpoint RSS at the end", lambda p: f"{p['endpoint_rss_mb_at_end']:.0f} MB"),
                line("endpoint start (serve included)", lambda p: f"{p['endpoint_start_s']:.1f} s"),
            ],
        ),
        "",
        f"## {big} models / {small} models (goal: within {FLAT_GOAL}x)",
        "",
        *table(
            ["per request", "ratio"],
            [
                ["**CPU per hit, raw HTTP**", f"**{r['cpu_per_hit_raw']:.2f}x**"],
                ["CPU per hit, boto3", f"{r['cpu_per_hit_boto3']:.2f}x"],
                ["**CPU per miss**", f"**{r['cpu_per_miss']:.2f}x**"],
                ["**p50 hit, raw HTTP**", f"**{r['hit_p50_raw']:.2f}x**"],
                ["p50 hit, boto3", f"{r['hit_p50_boto3']:.2f}x"],
                ["p50 hit within the stream", f"{r['stream_hit_p50']:.2f}x"],
                ["endpoint RSS", f"{r['endpoint_rss']:.2f}x"],
            ],
        ),
        "",
    ]
    for s in sizes:
        for e in per[s]["errors"][:10]:
            lines.append(f"- error, store {s}: `{e['target']}` {e['status']} {e['answer']}")
    lines += [f"Whole run: {result['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Build the stores, run the three endpoints side by side, write ``endpoint_scale.json`` and ``.md``."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("endpoint_scale", quick)
    budget_mb = BASE_MB + int((sizes.capacity + 0.5) * MODEL_MB) + HEADROOM_MB
    env = {"TORCH_MME_MEMORY_BUDGET_MB": str(budget_mb), "TORCH_MME_MEMORY_HEADROOM_MB": str(HEADROOM_MB)}
    with tempfile.TemporaryDirectory(prefix="torch-mme-bench-scale-") as tmp:
        base = Path(tmp)
        model = base / "build" / "model"
        (model / "code").mkdir(parents=True)
        (model / "code" / "inference.py").write_text(textwrap.dedent(ECHO_OWN_NAME))
        (model / "torch-mme.json").write_text(json.dumps({"memory_mb": MODEL_MB}))
        artifact = base / "build" / "model.tar.gz"
        artifact_bytes = pack(str(model), str(artifact))
        made = time.perf_counter()
        files = {name: (model / name).read_bytes() for name in ("code/inference.py", "torch-mme.json")}
        sides = [Side(size, base, artifact, files, env, sizes) for size in sizes.stores]
        stores_s = time.perf_counter() - made
        print(
            f"stores of {sizes.stores} models (and as many extracted artifacts in each models root) written in "
            f"{stores_s:.1f} s; budget {budget_mb} MB",
            file=sys.stderr,
        )
        result["config"] = {
            **asdict(sizes),
            "zipf_exponent": ZIPF_EXPONENT,
            "zipf_seed": ZIPF_SEED,
            "model_mb": MODEL_MB,
            "budget_mb": budget_mb,
            "headroom_mb": HEADROOM_MB,
            "artifact_bytes": artifact_bytes,
            "stores_written_s": stores_s,
        }
        with started(sides):
            print(f"endpoints up in {', '.join(f'{s.start_s:.0f} s' for s in sides)}", file=sys.stderr)
            per = measure(sides, sizes)
    result["stores"] = {str(size): figures for size, figures in per.items()}
    result["ratios"] = ratios(per)
    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result
