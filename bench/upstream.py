"""The front's client for MMS's Unix socket: ``torch_mme.runtime.upstream`` against aiohttp's, side by side.

A real ``torch-mme serve`` runs one echo model (``application/octet-stream`` in, the same bytes out, two
workers); both clients talk to MMS's own socket (``<run folder>/mms.sock``) from this process, on uvloop
as the front does, the way the front calls it: ``request(method, path, headers, body, timeout)`` with the
hop-by-hop headers dropped and ``check_request`` applied (the aiohttp one does both too, so the two differ
only in the HTTP client). aiohttp's is a ``ClientSession`` on a ``UnixConnector`` (keep-alive pooled, the
same pool size), created once.

Cases: 1 and 16 concurrent callers, a small body (the tiny model's 16-float JSON row, ~150 bytes) and a
1 MiB one (both ways: the echo answers it back). Per case and client: latency p50/p99 (at the caller) and
CPU time of this process per request (``getrusage``: the client's whole cost in the front, event loop
included; MMS is other processes). The clients take turns in chunks whose order rotates, every round.
"""

from __future__ import annotations

import asyncio
import json
import resource
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import uvloop

from bench.common import finish, new_result, request_body, rotation, summarize, tail, write_results
from bench.report import document, table, us
from torch_mme.runtime.httpserver import Response
from torch_mme.runtime.upstream import HOP_BY_HOP, Upstream, check_request
from torch_mme.tools.local_server import LocalServer

MODEL = "echo"
ECHO = """
    import torch

    def model_fn(model_dir):
        return torch.nn.Identity()

    def input_fn(body, content_type):
        return bytes(body)

    def predict_fn(data, model):
        return data

    def output_fn(prediction, accept):
        return prediction, "application/octet-stream"
"""
MIB = 2**20
POOL = 64
CPU_MARGIN = 0.10
"""upstream.py stays only while aiohttp costs at least this much more CPU per request (issue 13)."""


@dataclass(frozen=True)
class Sizes:
    rounds: int
    requests: dict[str, int]
    """Requests per chunk, by case."""


CASES = {  # name: (concurrent callers, body bytes)
    "small, 1 caller": (1, 0),
    "small, 16 callers": (16, 0),
    "1 MiB, 1 caller": (1, MIB),
    "1 MiB, 16 callers": (16, MIB),
}
FULL = Sizes(
    rounds=6,
    requests={"small, 1 caller": 600, "small, 16 callers": 1600, "1 MiB, 1 caller": 60, "1 MiB, 16 callers": 160},
)
QUICK = Sizes(
    rounds=2,
    requests={"small, 1 caller": 150, "small, 16 callers": 320, "1 MiB, 1 caller": 15, "1 MiB, 16 callers": 32},
)


class AiohttpUpstream:
    """``Upstream``'s interface on aiohttp's client: a pooled ``UnixConnector`` session."""

    def __init__(self, socket_path: str, pool_size: int = POOL) -> None:
        connector = aiohttp.UnixConnector(path=socket_path, limit=pool_size, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        headers = [(k, v) for k, v in headers or () if k.lower() not in HOP_BY_HOP]
        check_request(method, path, headers)
        async with self.session.request(
            method, "http://mms" + path, headers=headers, data=body, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            data = await response.read()
            kept = [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]
            return Response(response.status, kept, data)

    async def aclose(self) -> None:
        await self.session.close()


async def _chunk(client: Any, callers: int, requests: int, body: bytes) -> tuple[list[float], float]:
    """``requests`` invokes spread over ``callers`` tasks; (per-request seconds, this process's CPU seconds)."""
    headers = [("Content-Type", "application/octet-stream"), ("Accept", "application/octet-stream")]
    path = f"/models/{MODEL}/invoke"
    samples: list[float] = []
    clock = time.perf_counter

    async def caller(n: int) -> None:
        for _ in range(n):
            started = clock()
            response = await client.request("POST", path, headers, body, timeout=60.0)
            samples.append(clock() - started)
            if response.status != 200 or len(response.body) != len(body):
                raise RuntimeError(f"{response.status}: {response.body[:200]!r}")

    share = [requests // callers + (1 if i < requests % callers else 0) for i in range(callers)]
    cpu = _self_cpu()
    await asyncio.gather(*(caller(n) for n in share))
    return samples, _self_cpu() - cpu


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(socket_path: str, sizes: Sizes) -> dict[str, dict[str, Any]]:
    """Every case, both clients in rotating chunks; raw samples by case and client."""
    clients = {"upstream.py": Upstream(socket_path, POOL), "aiohttp": AiohttpUpstream(socket_path, POOL)}
    bodies = {0: request_body(), MIB: np.random.default_rng(7).bytes(MIB)}
    raw: dict[str, dict[str, Any]] = {case: {k: {"s": [], "cpu_s": 0.0, "n": 0} for k in clients} for case in CASES}
    try:
        for client in clients.values():  # warm-up: connections pooled, code paths run once
            await _chunk(client, 16, 64, bodies[0])
            await _chunk(client, 4, 8, bodies[MIB])
        for r in range(sizes.rounds):
            for case, (callers, size) in CASES.items():
                for key in rotation(list(clients), r):
                    samples, cpu = await _chunk(clients[key], callers, sizes.requests[case], bodies[size])
                    entry = raw[case][key]
                    entry["s"] += samples
                    entry["cpu_s"] += cpu
                    entry["n"] += len(samples)
    finally:
        clients["upstream.py"].close()
        await clients["aiohttp"].aclose()
    return raw


def figures(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: each client's latency (µs) and CPU µs per request, and aiohttp over upstream.py."""
    out: dict[str, dict[str, Any]] = {}
    for case, by_client in raw.items():
        row: dict[str, Any] = {}
        for key, entry in by_client.items():
            row[key] = {
                "latency_us": summarize(entry["s"], 1e6, "us"),
                "cpu_us_per_request": 1e6 * entry["cpu_s"] / max(entry["n"], 1),
            }
        ours, theirs = row["upstream.py"], row["aiohttp"]
        row["aiohttp_over_upstream"] = {
            "cpu_per_request": theirs["cpu_us_per_request"] / ours["cpu_us_per_request"],
            "p50": theirs["latency_us"]["p50"] / ours["latency_us"]["p50"],
            "p99": theirs["latency_us"]["p99"] / ours["latency_us"]["p99"],
        }
        out[case] = row
    return out


def decide(cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Keep upstream.py when aiohttp costs at least ``CPU_MARGIN`` more CPU per request in every case."""
    ratios = [c["aiohttp_over_upstream"]["cpu_per_request"] for c in cases.values()]
    keep = min(ratios) >= 1 + CPU_MARGIN
    return {"keep_upstream_py": keep, "min_cpu_ratio": min(ratios), "max_cpu_ratio": max(ratios)}


def write_echo_model(root: Path) -> Path:
    model_dir = root / MODEL
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    (model_dir / "code" / "inference.py").write_text(textwrap.dedent(ECHO))
    (model_dir / "torch-mme.json").write_text(json.dumps({"workers": 2}))
    return model_dir


def run(quick: bool = False, out_dir: str | Path = "bench/results") -> dict[str, Any]:
    """Start serve with the echo model, measure both clients against MMS's socket, write ``upstream.{json,md}``."""
    began = time.perf_counter()
    sizes = QUICK if quick else FULL
    result = new_result("upstream", quick)
    with tempfile.TemporaryDirectory(prefix="torch-mme-upstream-") as tmp:
        root, run_dir, log_path = Path(tmp) / "models", Path(tmp) / "run", Path(tmp) / "serve.log"
        model_dir = write_echo_model(root)
        with open(log_path, "wb") as log:
            server = LocalServer(str(root), env={"TORCH_MME_RUN_DIR": str(run_dir)}, log=log)
            try:
                server.start()
                status, body = server.load(MODEL, str(model_dir))
                if status != 200:
                    raise RuntimeError(f"LoadModel answered {status}: {body}")
                raw = uvloop.run(measure(str(run_dir / "mms.sock"), sizes))
            except Exception:
                print(tail(log_path))
                raise
            finally:
                server.stop()
    cases = figures(raw)
    result.update(
        config={"rounds": sizes.rounds, "requests_per_chunk": sizes.requests, "pool": POOL, "workers": 2},
        cases=cases,
        decision=decide(cases),
    )
    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result


def markdown(result: dict[str, Any]) -> str:
    cases, decision, cfg = result["cases"], result["decision"], result["config"]
    rows = []
    for case, row in cases.items():
        for key in ("upstream.py", "aiohttp"):
            lat = row[key]["latency_us"]
            rows.append(
                [case, key, lat["n"], us(lat["p50"]), us(lat["p99"]), f"{row[key]['cpu_us_per_request']:.0f} µs"]
            )
        q = row["aiohttp_over_upstream"]
        rows.append(
            [
                case,
                "**aiohttp / upstream.py**",
                "",
                f"{q['p50']:.2f}x",
                f"{q['p99']:.2f}x",
                f"**{q['cpu_per_request']:.2f}x**",
            ]
        )
    kept = "upstream.py" if decision["keep_upstream_py"] else "aiohttp"
    return document(
        "The front's client for MMS: upstream.py vs aiohttp (UnixConnector)",
        result,
        f"A real `torch-mme serve` with one echo model (2 workers); both clients on MMS's own Unix socket from one "
        f"uvloop process, the same pool size ({cfg['pool']}), taking turns in rotating chunks, {cfg['rounds']} "
        "rounds. CPU per request is this process's user + system time (the client's whole cost in the front).",
        table(["case", "client", "n", "p50", "p99", "CPU per request"], rows, "llrrrr"),
        f"aiohttp / upstream.py, CPU per request: {decision['min_cpu_ratio']:.2f}x to {decision['max_cpu_ratio']:.2f}x "
        f"over the cases; kept: **{kept}** (upstream.py stays while aiohttp costs at least "
        f"{100 * CPU_MARGIN:.0f}% more in every case).",
    )
