"""Soak with churn: 8 clients invoke 20 models while models load, unload and get evicted under a low budget.

``torch-mme serve`` runs in standalone eviction mode (``TORCH_MME_EVICTION=lru``)
with a 2,000 MB memory budget; each model declares 150 MB (``torch-mme.json``),
so about 8 of the 20 fit beside the server (about 400 MB). Models are echo models (the
identity): every request carries a unique id and the answer must be that id.

- **clients** (8) pick models with a skew (the first ones are hotter) and do
  what the SageMaker platform does on a miss: an invoke answered 404 is
  followed by LoadModel and one retry, and one answered 503 (the model is
  still loading) by one retry after 100 ms. LoadModel evicts the least
  recently used idle models to make room.
- **churn**: once a second, a listed model (loading, serving or idle) is
  unloaded with DELETE, as the platform does.

Checked: every request gets exactly one HTTP answer within its timeout (no
connection dropped, no answer for another request: the echoed id must match),
every error is a short JSON one of the documented kinds (404 not loaded or
being unloaded; 503 still loading; 507 no room), no id is answered twice, and
the USS of serve's whole process tree with every model unloaded ends within 5%
of its level after the warm-up. tests/reliability/test_soak.py runs it for 1 minute
in CI; ``python -m bench --only soak`` (bench/soak.py) for 5 minutes (``--quick``: 1).
It lives here, not in bench/, so the tests stand on their own: bench imports it.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.http import KeepAliveClient, json_error_problem
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

MIB = 2**20
MODELS = 20
CLIENTS = 8
BUDGET_MB = 2000
MODEL_MB = 150
CHURN_EVERY_S = 1.0
REQUEST_TIMEOUT_S = 30.0
USS_GOAL = 0.05
ALLOWED_ERRORS = {404, 503, 507}
ECHO = """
    import torch

    def model_fn(model_dir):
        return torch.nn.Identity()
"""
ENV = {
    "TORCH_MME_EVICTION": "lru",
    "TORCH_MME_MEMORY_BUDGET_MB": str(BUDGET_MB),
    "TORCH_MME_MEMORY_HEADROOM_MB": "100",
}


@dataclass
class Tally:
    """What the clients and the churn saw; every field is updated under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    requests: int = 0
    """Distinct requests (ids); a retry after a 404 or 503 is the same request."""
    attempts: Counter = field(default_factory=Counter)
    """HTTP answers to invokes, by status (every attempt)."""
    outcomes: Counter = field(default_factory=Counter)
    """The last answer of each request, by status."""
    loads: Counter = field(default_factory=Counter)
    unloads: Counter = field(default_factory=Counter)
    echoed: Counter = field(default_factory=Counter)
    unanswered: int = 0
    problems: list[str] = field(default_factory=list)
    max_loaded: int = 0

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text[:500])


@dataclass
class SoakResult:
    seconds: float
    warm_up_s: float
    requests: int
    attempts: dict[int, int]
    outcomes: dict[int, int]
    loads: dict[int, int]
    unloads: dict[int, int]
    evictions: int
    unanswered: int
    duplicated: int
    problems: list[str]
    max_loaded: int
    uss_after_warm_up_mb: float
    uss_at_end_mb: float

    @property
    def uss_growth(self) -> float:
        return (self.uss_at_end_mb - self.uss_after_warm_up_mb) / self.uss_after_warm_up_mb

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uss_growth": self.uss_growth, "answers_lost": self.unanswered}


class Soak:
    """One server, its models, and the clients and churn that run against it."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root
        self.log_path = log_path
        self.names = [f"m{i:02d}" for i in range(MODELS)]
        self.weights = [1.0 / (i + 1) ** 0.7 for i in range(MODELS)]  # a skew: the first models are hotter
        self.ids = itertools.count()
        for name in self.names:
            model_dir = root / name / "model"
            (model_dir / "code").mkdir(parents=True, exist_ok=True)
            (model_dir / "code" / "inference.py").write_text(textwrap.dedent(ECHO))
            (model_dir / "torch-mme.json").write_text(json.dumps({"memory_mb": MODEL_MB}))
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        self.server = LocalServer(str(root), env=ENV, args=["--timeout", "20"], log=self.log)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.log.close()

    def load(self, client: KeepAliveClient, name: str, tally: Tally) -> None:
        body = json.dumps({"model_name": name, "url": str(self.root / name / "model")}).encode()
        status, _, data = client.request("POST", "/models", body, {"Content-Type": "application/json"})
        with tally.lock:
            tally.loads[status] += 1
        if status not in (200, 409, 507):  # 409: another client is loading it; 507: no room even after eviction
            tally.problem(f"LoadModel {name}: {status} {data[:200]!r}")

    def invoke(self, client: KeepAliveClient, name: str, rid: int, tally: Tally) -> int | None:
        """One attempt; its status, or None when no answer came."""
        try:
            status, _, body = client.request(
                "POST", f"/models/{name}/invoke", json.dumps([rid]).encode(), {"Content-Type": "application/json"}
            )
        except Exception as exc:  # noqa: BLE001 - an answer lost: counted and reported
            with tally.lock:
                tally.unanswered += 1
            tally.problem(f"request {rid} to {name}: no answer: {exc!r}")
            return None
        with tally.lock:
            tally.attempts[status] += 1
        if status == 200:
            try:
                value = json.loads(body)
            except ValueError:
                value = body[:100]
            if value != [float(rid)]:
                tally.problem(f"request {rid} to {name}: answered {value!r} (another request's answer?)")
            with tally.lock:
                tally.echoed[rid] += 1
            return status
        why = f"undocumented status {status}" if status not in ALLOWED_ERRORS else json_error_problem(status, body)
        if why:
            tally.problem(f"request {rid} to {name}: {why}: {status} {body[:200]!r}")
        return status

    def client_loop(self, seed: int, until: float, tally: Tally) -> None:
        rng = random.Random(seed)
        client = KeepAliveClient(self.server.port, timeout=REQUEST_TIMEOUT_S)
        try:
            while time.monotonic() < until:
                name = rng.choices(self.names, self.weights)[0]
                with tally.lock:
                    rid = next(self.ids)
                    tally.requests += 1
                status = self.invoke(client, name, rid, tally)
                if status == 404:
                    self.load(client, name, tally)
                    status = self.invoke(client, name, rid, tally)
                elif status == 503:
                    time.sleep(0.1)
                    status = self.invoke(client, name, rid, tally)
                with tally.lock:
                    tally.outcomes[status or 0] += 1
        finally:
            client.close()
            if client.resent:
                tally.problem(f"client {seed}: the server closed its connection under {client.resent} request(s)")

    def churn(self, until: float, tally: Tally, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < until:
            time.sleep(CHURN_EVERY_S)
            status, _, body = self.server.request("GET", "/models", timeout=REQUEST_TIMEOUT_S)
            listed = [m["modelName"] for m in json.loads(body)["models"]] if status == 200 else []
            with tally.lock:
                tally.max_loaded = max(tally.max_loaded, len(listed))
            if not listed:
                continue
            status = self.server.unload(rng.choice(listed))
            with tally.lock:
                tally.unloads[status] += 1
            if status not in (200, 404):  # 404: evicted or unloaded meanwhile
                tally.problem(f"DELETE answered {status}")

    def run(self, seconds: float, seed: int) -> Tally:
        tally = Tally()
        until = time.monotonic() + seconds
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            loops = [pool.submit(self.client_loop, seed * 100 + i, until, tally) for i in range(CLIENTS)]
            churn = pool.submit(self.churn, until, tally, seed)
            for future in [*loops, churn]:
                future.result(timeout=seconds + 3 * REQUEST_TIMEOUT_S)  # a hung client fails here
        return tally

    def unload_all(self) -> None:
        status, _, body = self.server.request("GET", "/models", timeout=REQUEST_TIMEOUT_S)
        for model in json.loads(body)["models"] if status == 200 else []:
            self.server.unload(model["modelName"])

    def tree_uss(self) -> int:
        time.sleep(1.0)  # exited processes reaped, freed pages returned
        return processes.uss(processes.tree(self.server.process.pid))

    def evictions(self) -> int:
        return len(re.findall(r"evicting \S+ \(least recently used", self.log_path.read_text(errors="replace")))


def run_soak(root: Path, log_path: Path, seconds: float, warm_up_s: float) -> SoakResult:
    """Warm up, measure USS with nothing loaded, soak for ``seconds``, unload everything, measure again."""
    soak = Soak(root, log_path)
    soak.start()
    try:
        soak.run(warm_up_s, seed=1)  # Java's JIT and buffers, the front and the template settle
        soak.unload_all()
        baseline = soak.tree_uss()
        evictions_before = soak.evictions()
        started = time.monotonic()
        tally = soak.run(seconds, seed=2)
        soaked = time.monotonic() - started
        soak.unload_all()
        final = soak.tree_uss()
        evictions = soak.evictions() - evictions_before
    finally:
        soak.stop()
    return SoakResult(
        seconds=round(soaked, 1),
        warm_up_s=warm_up_s,
        requests=tally.requests,
        attempts=dict(sorted(tally.attempts.items())),
        outcomes=dict(sorted(tally.outcomes.items())),
        loads=dict(sorted(tally.loads.items())),
        unloads=dict(sorted(tally.unloads.items())),
        evictions=evictions,
        unanswered=tally.unanswered,
        duplicated=sum(1 for count in tally.echoed.values() if count > 1),
        problems=tally.problems,
        max_loaded=tally.max_loaded,
        uss_after_warm_up_mb=round(baseline / MIB, 1),
        uss_at_end_mb=round(final / MIB, 1),
    )


def problems(result: SoakResult) -> list[str]:
    """Every way the soak failed its goals; empty when it passed."""
    found = list(result.problems)
    if result.unanswered:
        found.append(f"{result.unanswered} requests got no answer")
    if result.duplicated:
        found.append(f"{result.duplicated} requests were answered twice")
    if sum(result.outcomes.values()) != result.requests:
        found.append(f"{result.requests} requests, {sum(result.outcomes.values())} outcomes")
    if result.outcomes.get(200, 0) < result.requests / 2:
        found.append(f"fewer than half the requests were served: {result.outcomes}")
    if result.evictions == 0 or result.unloads.get(200, 0) == 0:
        found.append(f"no churn: {result.evictions} evictions, unloads {result.unloads}")
    if result.uss_growth > USS_GOAL:
        found.append(f"USS grew {100 * result.uss_growth:.1f}% (goal: {100 * USS_GOAL:.0f}%)")
    return found
