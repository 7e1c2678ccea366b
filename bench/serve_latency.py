"""Latency of one request in-process vs. through ``torch-mme serve``, and LoadModel time, in one run.

Three measurements, on a tiny TorchScript model (a scripted ``nn.Linear(16, 4)``)
and a JSON body of one row of 16 floats:

1. **in-process**: ``handler.model.load`` then ``decode -> predict -> encode``
   called directly, timed per call with ``time.perf_counter``;
2. **serve**: the same model loaded with LoadModel into a ``LocalServer`` and
   invoked over ONE keep-alive ``http.client.HTTPConnection``
   (``POST /models/<name>/invoke``), timed per request;
3. **LoadModel**: the same kind of model registered and loaded under N names
   (``POST /models``, which answers 200 once the worker has loaded it), each
   timed, then unloaded with ``DELETE``.

The machine is shared and noisy, so 1 and 2 alternate in chunks
(in-process, serve, in-process, ..., in-process) and the pooled percentiles
are reported together with the ratio serve / in-process, which is what to
compare between runs; per-chunk ratios show how stable it was.
"""

from __future__ import annotations

import gc
import http.client
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    time_inproc,
    write_model,
    write_results,
)
from bench.report import document, table, us
from handler import model as handler_model
from torch_mme.tools.local_server import LocalServer

INVOKE_NAME = "bench-invoke"
LOAD_PREFIX = "bench-load"


@dataclass(frozen=True)
class Sizes:
    """How much to measure; ``rounds`` serve chunks sit between ``rounds + 1`` in-process chunks.

    The serve warm-up is long on purpose: the JVM in MMS keeps getting faster for
    about the first 1000 requests (p50 ~2 ms at first, ~0.9 ms after).
    """

    inproc_calls: int
    inproc_warmup: int
    http_requests: int
    http_warmup: int
    rounds: int
    loads: int


FULL = Sizes(inproc_calls=5000, inproc_warmup=500, http_requests=2000, http_warmup=1000, rounds=5, loads=10)
QUICK = Sizes(inproc_calls=500, inproc_warmup=100, http_requests=200, http_warmup=500, rounds=2, loads=3)


class CountingConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` that counts how many TCP connections it opened (1 when keep-alive held)."""

    opened = 0

    def connect(self) -> None:
        self.opened += 1
        super().connect()


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal chunk sizes."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request on ``conn``, response read to the end so the connection can be reused."""
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def time_http(conn: http.client.HTTPConnection, path: str, body: bytes, requests: int) -> list[float]:
    """Per-request seconds of ``POST path`` on the one keep-alive connection; any non-200 aborts."""
    headers = {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE}
    samples = []
    clock = time.perf_counter
    for _ in range(requests):
        start = clock()
        status, data = post(conn, path, body, headers)
        samples.append(clock() - start)
        if status != 200:
            raise RuntimeError(f"invoke answered {status}: {data[:500]!r}")
    return samples


def check_same_answer(model: handler_model.Model, conn: http.client.HTTPConnection, path: str, body: bytes) -> None:
    """Both sides must compute the same thing, or the comparison means nothing."""
    local, _ = model.encode(model.predict(model.decode(body, JSON_TYPE)), JSON_TYPE)
    status, remote = post(conn, path, body, {"Content-Type": JSON_TYPE, "Accept": JSON_TYPE})
    if status != 200:
        raise RuntimeError(f"invoke answered {status}: {remote[:500]!r}")
    np.testing.assert_allclose(np.array(json.loads(remote)), np.array(json.loads(local)), rtol=1e-6)


def measure_latency(
    model: handler_model.Model, server: LocalServer, body: bytes, sizes: Sizes
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Alternate in-process and serve chunks; returns (in_process, serve, ratio) summaries."""
    path = f"/models/{INVOKE_NAME}/invoke"
    conn = CountingConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.connect()
        check_same_answer(model, conn, path, body)
        time_inproc(model, body, sizes.inproc_warmup)
        time_http(conn, path, body, sizes.http_warmup)

        inproc_chunks: list[list[float]] = []
        http_chunks: list[list[float]] = []
        inproc_sizes = split(sizes.inproc_calls, sizes.rounds + 1)
        http_sizes = split(sizes.http_requests, sizes.rounds)
        for i in range(sizes.rounds + 1):
            gc.collect()
            inproc_chunks.append(time_inproc(model, body, inproc_sizes[i]))
            if i < sizes.rounds:
                gc.collect()
                http_chunks.append(time_http(conn, path, body, http_sizes[i]))
        opened = conn.opened
    finally:
        conn.close()

    in_process = summarize([s for c in inproc_chunks for s in c], 1e6, "us")
    serve = summarize([s for c in http_chunks for s in c], 1e6, "us")
    in_process["chunk_p50"] = [float(np.percentile(c, 50) * 1e6) for c in inproc_chunks]
    serve["chunk_p50"] = [float(np.percentile(c, 50) * 1e6) for c in http_chunks]
    serve["connections_opened"] = opened
    # each serve chunk against the mean of the in-process chunks on either side of it
    per_round = [
        serve["chunk_p50"][i] / ((in_process["chunk_p50"][i] + in_process["chunk_p50"][i + 1]) / 2)
        for i in range(sizes.rounds)
    ]
    ratio = {
        "p50": serve["p50"] / in_process["p50"],
        "p99": serve["p99"] / in_process["p99"],
        "mean": serve["mean"] / in_process["mean"],
        "per_round_p50": per_round,
        "per_round_p50_median": statistics.median(per_round),
    }
    return in_process, serve, ratio


def measure_loads(server: LocalServer, models_root: Path, count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """LoadModel under ``count`` new names, each timed until its 200; then DELETE each (also timed)."""
    names = [f"{LOAD_PREFIX}-{i}" for i in range(count)]
    for i, name in enumerate(names):
        write_model(models_root / name / "model", seed=100 + i)
    load_s, unload_s, loaded = [], [], []
    try:
        for name in names:
            start = time.perf_counter()
            status, reply = server.load(name, str(models_root / name / "model"))
            elapsed = time.perf_counter() - start
            if status != 200:
                raise RuntimeError(f"LoadModel {name} answered {status}: {reply}")
            loaded.append(name)
            load_s.append(elapsed)
    finally:
        for name in loaded:
            start = time.perf_counter()
            status = server.unload(name)
            unload_s.append(time.perf_counter() - start)
            if status != 200:
                print(f"warning: DELETE /models/{name} answered {status}", file=sys.stderr)
    load = summarize(load_s, 1e3, "ms")
    load["all"] = [s * 1e3 for s in load_s]
    return load, summarize(unload_s, 1e3, "ms")


def measure_inproc_loads(models_root: Path, count: int) -> dict[str, Any]:
    """``handler.model.load`` of the same model directories, for scale next to LoadModel."""
    samples = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in range(count):
            start = time.perf_counter()
            handler_model.load(str(models_root / f"{LOAD_PREFIX}-{i}" / "model"), torch.device("cpu"))
            samples.append(time.perf_counter() - start)
    return summarize(samples, 1e3, "ms")


def markdown(result: dict[str, Any]) -> str:
    """The short human summary written next to the JSON."""
    ratio = result["ratio"]
    inp, srv, load, inload = result["in_process"], result["serve"], result["load_model"], result["in_process_load"]
    rounds = ", ".join(f"{r:.1f}x" for r in ratio["per_round_p50"])
    rows = [
        ["in-process decode -> forward -> encode", inp["n"], *(us(inp[k]) for k in ("p50", "p99", "mean", "max"))],
        ["through serve (POST /models/<name>/invoke)", srv["n"], *(us(srv[k]) for k in ("p50", "p99", "mean", "max"))],
        [
            "**ratio serve / in-process**",
            "",
            f"**{ratio['p50']:.1f}x**",
            f"{ratio['p99']:.1f}x",
            f"{ratio['mean']:.1f}x",
            "",
        ],
        [
            "LoadModel (POST /models until 200)",
            load["n"],
            f"{load['p50']:.0f} ms",
            "",
            f"{load['mean']:.0f} ms",
            f"{load['max']:.0f} ms",
        ],
        [
            "in-process `handler.model.load` (same dirs)",
            inload["n"],
            f"{inload['p50']:.1f} ms",
            "",
            f"{inload['mean']:.1f} ms",
            f"{inload['max']:.1f} ms",
        ],
    ]
    return document(
        "serve latency: in-process vs. `torch-mme serve`",
        result,
        table(["measurement", "n", "p50", "p99", "mean", "max"], rows),
        f"Per-round p50 ratios (each serve chunk vs. the in-process chunks around it): {rounds}.",
        f"The ratio means a request through serve costs about {ratio['p50']:.0f}x the handler's own work for this "
        f"tiny model: the ~{us(srv['p50'] - inp['p50'])} difference at p50 is fixed transport overhead "
        "(HTTP front -> MMS -> worker and back), which matters less as the model's own compute grows.",
        facts=[
            f"model: scripted `nn.Linear({FEATURES}, {OUTPUTS})`, JSON in/out, body {result['config']['body_bytes']} "
            f"bytes; serve over {srv['connections_opened']} keep-alive connection(s), 1 worker"
        ],
    )


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Measure everything in one run; write ``serve_latency.json`` and ``.md`` to ``out_dir``; return the result."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("serve_latency", quick)
    body = request_body()
    result["config"] = {**asdict(sizes), "body_bytes": len(body), "torch_threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory(prefix="torch-mme-bench-") as tmp:
        models_root = Path(tmp) / "models"
        invoke_dir = models_root / INVOKE_NAME / "model"
        write_model(invoke_dir, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = handler_model.load(str(invoke_dir), torch.device("cpu"))

        log_path = Path(tmp) / "serve.log"
        with open(log_path, "wb") as log:
            server = LocalServer(str(models_root), log=log)
            try:
                start = time.perf_counter()
                server.start()
                result["server_start_s"] = time.perf_counter() - start
                print(f"server up on {server.url} in {result['server_start_s']:.1f} s", file=sys.stderr)
                start = time.perf_counter()
                status, reply = server.load(INVOKE_NAME, str(invoke_dir))
                if status != 200:
                    raise RuntimeError(f"LoadModel {INVOKE_NAME} answered {status}: {reply}")
                result["invoke_model_load_ms"] = (time.perf_counter() - start) * 1e3

                print("timing invoke: in-process and serve, alternating", file=sys.stderr)
                result["in_process"], result["serve"], result["ratio"] = measure_latency(model, server, body, sizes)
                print(f"timing LoadModel x{sizes.loads}", file=sys.stderr)
                result["load_model"], result["unload_model"] = measure_loads(server, models_root, sizes.loads)
                result["in_process_load"] = measure_inproc_loads(models_root, sizes.loads)
            except BaseException:
                log.flush()
                print(f"--- serve log (last lines) ---\n{tail(log_path)}", file=sys.stderr)
                raise
            finally:
                server.stop()

    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result
