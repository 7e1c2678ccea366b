"""This project against its peers, on the same models, on the same machine, in the same run.

Servers (each on 127.0.0.1, all running at once, measured one after the other in rotating order):

- **in-process** (the limit): the project's decode -> forward -> encode (``handler/model.py``) called directly;
- **one-process app**: every model in one Python process behind a plain aiohttp server, same JSON contract;
- **MMS, minimal handler**: multi-model-server 1.1.11 as it comes, a function-form handler doing JSON ->
  TorchScript forward -> JSON, no front (the baseline of the latency goal);
- **TorchServe 0.12**: each model a ``.mar`` packed with torch-model-archiver, the same minimal handler;
- **torch-mme serve**: this project (aiohttp front -> MMS -> its handler).

TorchServe, its archiver and aiohttp come from the peers' own venv (``bench/peers/peerenv.py``, created
once). Every server runs torch with one intra-op thread per model process (what MMS gives its workers), and
in-process is timed with one thread too. Figures, for a tiny model and a compute-bound one
(``bench/peers/models.py``): 1 latency at 1 client, 2 throughput at 1/4/16 clients over 4 models,
3 LoadModel time, 4 USS per additional model over the whole process tree; 5 (this project only) the
endpoint's cache hit vs. miss and the Zipf run, from ``bench/endpoint.py``'s results.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT, finish, new_result, request_body, write_results
from bench.peers import measure, models, peerenv, report
from bench.peers.servers import OneProcess, Peer, PlainMMS, TorchMME, TorchServe, make_archives

ENDPOINT_MAX_AGE = timedelta(hours=24)


@dataclass(frozen=True)
class Sizes:
    """How much to measure (full: about 5 minutes on 2 cores; quick: under 2).

    ``duration_s`` is each server's time per throughput point, cut into ``segments`` that rotate between them.
    """

    tiny_loads: int
    compute_loads: int
    jvm_warmup: int
    tiny_requests: int
    compute_requests: int
    rounds: int
    clients: tuple[int, ...]
    duration_s: float
    segments: int
    settle_s: float


FULL = Sizes(
    tiny_loads=10,
    compute_loads=10,
    jvm_warmup=1000,
    tiny_requests=2000,
    compute_requests=300,
    rounds=5,
    clients=(1, 4, 16),
    duration_s=5.0,
    segments=5,
    settle_s=0.5,
)
QUICK = Sizes(
    tiny_loads=4,
    compute_loads=4,
    jvm_warmup=300,
    tiny_requests=300,
    compute_requests=40,
    rounds=2,
    clients=(1, 4, 16),
    duration_s=1.5,
    segments=2,
    settle_s=0.3,
)
THROUGHPUT_MODELS = 4


def write_models(root: Path, sizes: Sizes, body: bytes) -> tuple[measure.Model, dict[str, list[measure.Model]]]:
    """The warm-up model and, per kind, the models to load; each in ``root/<name>/model/model.pt``."""
    rows = torch.tensor(json.loads(body), dtype=torch.float32)

    def one(name: str, kind: str, seed: int) -> measure.Model:
        path = root / name / "model"
        module = models.write(kind, path, seed)
        with torch.inference_mode():
            expected = module(rows).numpy()
        return measure.Model(name, kind, path, expected)

    warm = one("warmup", "tiny", 0)
    counts = {"tiny": sizes.tiny_loads, "compute": sizes.compute_loads}
    return warm, {kind: [one(f"{kind}-{i:02d}", kind, 1 + i) for i in range(counts[kind])] for kind in models.KINDS}


def endpoint_figures(out_dir: Path) -> dict[str, Any]:
    """Figure 5 from ``bench/endpoint.py``: its ``endpoint.json`` when written in the last 24 h, else a quick run."""
    data, source = None, ""
    for path in dict.fromkeys([out_dir.resolve() / "endpoint.json", REPO_ROOT / "bench" / "results" / "endpoint.json"]):
        with contextlib.suppress(OSError, ValueError, KeyError):
            found = json.loads(path.read_text())
            if datetime.now(timezone.utc) - datetime.fromisoformat(found["date_utc"]) <= ENDPOINT_MAX_AGE:
                data, source = found, f"`{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}`"
                break
    if data is None:
        from bench import endpoint

        print("peers: no endpoint.json from the last 24 h; running the endpoint benchmark (quick)", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="bench-peers-endpoint-") as tmp:
            data = endpoint.run(quick=True, out_dir=tmp)
        source = "a quick run of `bench/endpoint.py` inside this benchmark"
    hm, z = data["hit_miss"], data["zipf"]
    return {
        "source": source,
        "date_utc": data["date_utc"],
        "quick": data["quick"],
        "miss_ms": hm["miss"],
        "hit_boto3_ms": hm["hit_boto3"],
        "hit_raw_http_ms": hm["hit_raw_http"],
        "hit_direct_ms": hm["hit_direct"],
        "ratio": hm["ratio"],
        "zipf": {
            "models": data["config"]["models"],
            "sent": z["sent"],
            "capacity": z["ideal_lru_capacity"],
            "hit_ratio": z["hit_ratio"],
            "ideal_lru_hit_ratio": z["ideal_lru_hit_ratio"],
            "errors": len(z["errors"]),
            "max_loaded": z["max_loaded"],
            "latency_hit_ms": z["latency_hit"],
            "latency_miss_ms": z["latency_miss"],
        },
    }


class Phases:
    """Seconds spent per phase, for the report: ``with phases("name"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began


@contextlib.contextmanager
def stopped_on_sigterm():
    """SIGTERM raises ``SystemExit`` while the servers run, so they are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_all(servers: list[Peer]) -> dict[str, float]:
    started = {}
    for server in servers:
        began = time.perf_counter()
        server.start()
        started[server.key] = time.perf_counter() - began
        print(f"  {server.label} ready on :{server.port} in {started[server.key]:.1f} s", file=sys.stderr)
    return started


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Measure every figure on every server; write ``peers.json``/``.md`` and the charts to ``out_dir``."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    out = Path(out_dir)
    result = new_result("peers", quick)
    venv = peerenv.ensure()
    result["peer_versions"] = peerenv.versions(venv)
    result["peer_venv"] = str(venv)
    body = request_body()
    threads = torch.get_num_threads()
    result["config"] = {
        **asdict(sizes),
        "body_bytes": len(body),
        "throughput_models": THROUGHPUT_MODELS,
        "torch_threads_per_model_process": 1,
        "models": models.DESCRIPTION,
    }

    phase = Phases()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, stopped_on_sigterm():
        scratch = Path(tmp)
        models_root = scratch / "models"
        with phase("models and archives"):
            warm, loaded = write_models(models_root, sizes, body)
            every = {m.name: m.path for m in [warm, *loaded["tiny"], *loaded["compute"]]}
            make_archives(venv, every, scratch / "ts-store", scratch)
        servers: list[Peer] = [
            OneProcess(scratch, peerenv.python(venv)),
            PlainMMS(scratch),
            TorchServe(scratch, venv, scratch / "ts-store"),
            TorchMME(scratch, models_root),
        ]
        result["servers"] = {s.key: {"label": s.label, **s.settings} for s in servers}
        try:
            with phase("start and warm-up"):
                print("peers: starting every server", file=sys.stderr)
                result["start_s"] = start_all(servers)
                print(f"peers: warm-up model on each, {sizes.jvm_warmup} requests (JVMs)", file=sys.stderr)
                for s in servers:
                    s.load(warm.name, warm.path)
                measure.warm(servers, warm, body, sizes.jvm_warmup)

            with phase("LoadModel and USS"):
                print("peers: LoadModel and USS, one model at a time on each server", file=sys.stderr)
                result["loads"] = measure.loads(servers, loaded, body, sizes.settle_s)

            torch.set_num_threads(1)
            result["forward_ms"], result["latency"] = {}, {}
            with phase("latency"):
                for kind in models.KINDS:
                    model = loaded[kind][0]
                    requests = sizes.tiny_requests if kind == "tiny" else sizes.compute_requests
                    inproc = requests * 5 // 2 if kind == "tiny" else requests
                    warmup = sizes.jvm_warmup // 4 if kind == "tiny" else 10
                    print(f"peers: latency, {kind}, 1 client, {requests} requests per server", file=sys.stderr)
                    result["forward_ms"][kind] = measure.forward_ms(measure.inproc_model(model), body, 50)
                    result["latency"][kind] = measure.latency(
                        servers, model, body, requests, inproc, warmup, sizes.rounds
                    )
            torch.set_num_threads(threads)

            result["throughput"] = {}
            with phase("throughput"):
                for kind in models.KINDS:
                    print(f"peers: throughput, {kind}, {sizes.duration_s:g} s per point", file=sys.stderr)
                    result["throughput"][kind] = measure.throughput(
                        servers, loaded[kind][:THROUGHPUT_MODELS], body, sizes.clients, sizes.duration_s, sizes.segments
                    )
        finally:
            torch.set_num_threads(threads)
            with phase("stop"), ThreadPoolExecutor(len(servers)) as pool:
                for done in [pool.submit(s.stop) for s in servers]:
                    with contextlib.suppress(Exception):
                        done.result()

    print("peers: figure 5 (endpoint)", file=sys.stderr)
    with phase("figure 5"):
        result["endpoint"] = endpoint_figures(out)
    result["phase_s"] = phase.seconds
    report.derive(result)
    finish(result, began)
    from bench import plots

    result["plots"] = plots.plot_peers(result, out)
    write_results(result, report.markdown(result), out)
    return result
