"""Many resident models behind one ``torch-mme serve``: what one more model costs at 10, 100, 400, 1,000 resident.

One server; tiny scripted ``nn.Linear(16, 4)`` models (model ``i`` has its bias
shifted by ``i``, so every answer shows which model gave it) are loaded one
after another, each invoked once and its answer checked. At each stage (N
models resident, each having answered once) the bench measures, in the same run:

- **probes** (``PROBES`` times): LoadModel of one more model, its first
  invoke, warm invokes, GetModel, UnloadModel (the probe leaves, N stays);
- **invoke p50** over random resident models (warm, one keep-alive connection);
- **USS**: summed over the whole process tree of ``serve``; "per model" is the
  increment from the previous stage divided by the models added;
- **ListModels**: every page followed (``limit`` + ``next_page_token`` in,
  ``nextPageToken`` out), the names gathered must be exactly the resident ones;
- every resident model invoked again at the last stage, each answer checked.

Memory guard: before and while loading, the host's available memory must stay
above ``KEEP_FREE`` (``--keep-free-gib``; others share the machine); otherwise loading stops early,
says so, and the stage is measured at the count reached. Each run is stored under a label (``--label before|after``) in
``scale.json``, so the markdown and the plot show before and after together.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from bench.common import (
    FEATURES,
    JSON_TYPE,
    finish,
    new_result,
    request_body,
    summarize,
    tail,
)
from bench.report import bullets, document, header_lines, table
from tests.support.http import KeepAliveClient
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer

MB = 10**6
GIB = 2**30
KEEP_FREE = 6 * GIB
"""Available memory the bench never takes the host under."""
FULL_STAGES = (10, 100, 400, 1000)
QUICK_STAGES = (5, 20)
PROBES = 20
"""LoadModel-invoke-GetModel-UnloadModel cycles per stage; the flatness ratios are p50s of these (there were
10: a few slow cycles on this shared machine moved a p50 of ten)."""
WARM_INVOKES = 200
PAGE_LIMIT = 100
SETTLE_S = 1.0


class Models:
    """Model folders on disk: one scripted module, saved with bias + i for model i."""

    def __init__(self, root: Path) -> None:
        self.root = root
        torch.manual_seed(0)
        self.module = torch.nn.Linear(FEATURES, 4).eval()
        self.scripted = torch.jit.script(self.module)
        self.bias = self.module.bias.detach().clone()
        self.body = request_body()
        with torch.no_grad():
            self.base = self.module(torch.tensor(json.loads(self.body), dtype=torch.float32)).numpy()

    def write(self, name: str, index: int) -> str:
        folder = self.root / name / "model"
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            self.scripted.bias.copy_(self.bias + index)
        self.scripted.save(str(folder / "model.pt"))
        return str(folder)

    def correct(self, index: int, body: bytes) -> bool:
        try:
            answer = np.asarray(json.loads(body), dtype=np.float64)
        except (ValueError, TypeError):
            return False
        return answer.shape == self.base.shape and bool(np.allclose(answer, self.base + index, atol=1e-4))


class Bench:
    def __init__(self, server: LocalServer, models: Models) -> None:
        self.server = server
        self.models = models
        self.client = KeepAliveClient(server.port, timeout=600)
        self.resident: dict[str, int] = {}
        self.load_s: list[float] = []
        self.first_invoke_s: list[float] = []
        self.wrong: list[str] = []
        self.keep_free = KEEP_FREE

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, float]:
        headers = {"Content-Type": JSON_TYPE} if body is not None else {}
        started = time.perf_counter()
        status, _, data = self.client.request(method, path, body, headers)
        return status, data, time.perf_counter() - started

    def load(self, name: str, index: int) -> tuple[float, float]:
        """LoadModel + first invoke (checked); their times."""
        url = self.models.write(name, index)
        status, data, load_s = self.call("POST", "/models", json.dumps({"model_name": name, "url": url}).encode())
        if status != 200:
            raise RuntimeError(f"LoadModel {name} answered {status}: {data[:300]!r}")
        first_s = self.invoke(name, index)
        return load_s, first_s

    def invoke(self, name: str, index: int) -> float:
        status, data, seconds = self.call("POST", f"/models/{name}/invoke", self.models.body)
        if status != 200 or not self.models.correct(index, data):
            self.wrong.append(f"{name}: {status} {data[:120]!r}")
        return seconds

    def grow_to(self, count: int) -> str | None:
        """Load resident models up to ``count``; the reason it stopped early, or None."""
        while len(self.resident) < count:
            if len(self.resident) % 20 == 0:
                available = psutil.virtual_memory().available
                if available < self.keep_free + GIB // 2:
                    return f"stopped at {len(self.resident)} models: {available / GIB:.1f} GiB available"
            index = len(self.resident)
            name = f"scale-{index}"
            load_s, first_s = self.load(name, index)
            self.load_s.append(load_s)
            self.first_invoke_s.append(first_s)
            self.resident[name] = index
        return None

    def probe(self, count: int, probes: int) -> dict[str, Any]:
        loads, firsts, warms, gets, unloads = [], [], [], [], []
        for i in range(probes):
            name, index = f"probe-{count}-{i}", 100_000 + count * 100 + i
            load_s, first_s = self.load(name, index)
            loads.append(load_s)
            firsts.append(first_s)
            warms += [self.invoke(name, index) for _ in range(5)]
            status, _, get_s = self.call("GET", f"/models/{name}")
            gets.append(get_s)
            status, data, unload_s = self.call("DELETE", f"/models/{name}")
            if status != 200:
                raise RuntimeError(f"UnloadModel {name} answered {status}: {data[:300]!r}")
            unloads.append(unload_s)
        return {
            "load_s": summarize(loads, 1.0, "s"),
            "first_invoke_ms": summarize(firsts, 1e3, "ms"),
            "probe_warm_invoke_ms": summarize(warms, 1e3, "ms"),
            "get_ms": summarize(gets, 1e3, "ms"),
            "unload_s": summarize(unloads, 1.0, "s"),
        }

    def warm_invokes(self, calls: int) -> dict[str, Any]:
        names = list(self.resident)
        rng = random.Random(7)
        samples = [self.invoke(name, self.resident[name]) for name in (rng.choice(names) for _ in range(calls))]
        return summarize(samples, 1e3, "ms")

    def list_all(self) -> dict[str, Any]:
        """Follow ListModels' pages; whether they hold exactly the resident models."""
        names, pages, token, started = [], 0, None, time.perf_counter()
        while True:
            query = f"?limit={PAGE_LIMIT}" + (f"&next_page_token={token}" if token else "")
            status, data, _ = self.call("GET", "/models" + query)
            if status != 200:
                return {"ok": False, "error": f"{status} {data[:200]!r}"}
            page = json.loads(data)
            names += [m["modelName"] for m in page.get("models", [])]
            pages += 1
            token = page.get("nextPageToken")
            if not token or pages > 10_000:
                break
        return {
            "ok": sorted(names) == sorted(self.resident) and len(names) == len(set(names)),
            "pages": pages,
            "listed": len(names),
            "seconds": time.perf_counter() - started,
        }

    def tree_uss(self) -> int:
        return processes.uss(processes.tree(self.server.process.pid))

    def model_uss(self, sample: int = 20) -> dict[str, float]:
        """USS of a sample of resident models' own processes (median), split by process."""
        root, per_model = self.server.process.pid, []
        for name in list(self.resident)[-sample:]:
            family = processes.model_processes(root, name)
            per_model.append(sorted((processes.uss([p]) / MB for p in family), reverse=True))
        totals = [sum(m) for m in per_model]
        return {
            "median_mb": statistics.median(totals) if totals else 0.0,
            "processes": statistics.median(len(m) for m in per_model) if per_model else 0,
            "largest_process_mb": statistics.median(m[0] for m in per_model if m) if per_model else 0.0,
        }


def measure(
    stages: tuple[int, ...], probes: int, root: Path, log_path: Path, keep_free: int = KEEP_FREE
) -> dict[str, Any]:
    models = Models(root)
    stages_out: list[dict[str, Any]] = []
    stopped = None
    with open(log_path, "wb") as log, LocalServer(str(root), log=log, args=["--timeout", "60"]) as server:
        bench = Bench(server, models)
        bench.keep_free = keep_free  # the host's memory left to others while loading
        bench.load("warmup", 999_999)  # the first fork turns the template's pages into shared ones
        assert bench.call("DELETE", "/models/warmup")[0] == 200
        time.sleep(SETTLE_S)
        base_uss = previous_uss = bench.tree_uss()
        previous = 0
        for count in stages:
            free = psutil.virtual_memory().available
            stopped = bench.grow_to(count)
            if stopped:
                print(f"scale: {stopped}")
                count = len(bench.resident)  # measured where it stopped, if that is a stage of its own
                if count <= previous:
                    break
            loaded_at = len(bench.load_s)
            time.sleep(SETTLE_S)
            uss = bench.tree_uss()
            stage = {
                "resident": count,
                "available_gib_before": free / GIB,
                "available_gib": psutil.virtual_memory().available / GIB,
                "tree_uss_mb": uss / MB,
                "uss_per_model_mb": (uss - base_uss) / MB / count,
                "uss_per_added_model_mb": (uss - previous_uss) / MB / (count - previous),
                "model_uss": bench.model_uss(),
                "resident_loads_s": summarize(bench.load_s[max(0, loaded_at - 10) : loaded_at], 1.0, "s"),
                **bench.probe(count, probes),
                "invoke_ms": bench.warm_invokes(WARM_INVOKES),
                "list": bench.list_all(),
            }
            stages_out.append(stage)
            print(
                f"scale: {count} resident: load p50 {stage['load_s']['p50']:.3f} s, "
                f"invoke p50 {stage['invoke_ms']['p50']:.2f} ms, first {stage['first_invoke_ms']['p50']:.1f} ms, "
                f"{stage['uss_per_added_model_mb']:.1f} MB/model, list ok {stage['list']['ok']}, "
                f"{stage['available_gib']:.1f} GiB free",
                flush=True,
            )
            previous, previous_uss = count, uss
            if stopped:
                break
        every = [bench.invoke(name, index) for name, index in bench.resident.items()]
        answered_all = not bench.wrong
        stop_started = time.perf_counter()
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or ())]
    return {
        "stages": stages_out,
        "stopped": stopped,
        "resident_max": len(bench.resident),
        "wrong_answers": bench.wrong[:20],
        "answered_all": answered_all,
        "last_invoke_of_every_model_ms": summarize(every, 1e3, "ms") if every else None,
        "first_invoke_ms_all": summarize(bench.first_invoke_s, 1e3, "ms"),
        "stop_s": time.perf_counter() - stop_started,
        "leftover_processes": leftovers,
        "log_tail": tail(log_path, 20) if bench.wrong or stopped else "",
    }


def run(
    quick: bool = False,
    out_dir: str = "bench/results",
    label: str = "after",
    stages: str = "",
    keep_free_gib: float = KEEP_FREE / GIB,
) -> dict[str, Any]:
    """Measure under ``label``; other labels already in ``scale.json`` are kept, so before and after show together."""
    began = time.perf_counter()
    chosen = tuple(int(s) for s in stages.split(",") if s) or (QUICK_STAGES if quick else FULL_STAGES)
    result = new_result("scale", quick)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as root, tempfile.TemporaryDirectory() as logs:
        keep_free = int(keep_free_gib * GIB)
        result.update(measure(chosen, 3 if quick else PROBES, Path(root), Path(logs) / "serve.log", keep_free))
        result["keep_free_gib"] = keep_free_gib
    finish(result, began)
    out = Path(out_dir)
    path = out / "scale.json"
    runs = {}
    if path.exists():
        runs = json.loads(path.read_text()).get("runs", {})
    runs[label] = result
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "scale", "runs": runs}, indent=2) + "\n")
    text = markdown(runs)
    (out / "scale.md").write_text(text)
    plot(runs, out / "scale.png")
    print(text)
    return result


ROWS = (
    ("LoadModel p50", lambda s: s["load_s"]["p50"] * 1e3, "ms"),
    ("LoadModel p99", lambda s: s["load_s"]["p99"] * 1e3, "ms"),
    ("UnloadModel p50", lambda s: s["unload_s"]["p50"] * 1e3, "ms"),
    ("GetModel p50", lambda s: s["get_ms"]["p50"], "ms"),
    ("invoke p50 (warm, random resident model)", lambda s: s["invoke_ms"]["p50"], "ms"),
    ("first invoke after load p50", lambda s: s["first_invoke_ms"]["p50"], "ms"),
    ("first invoke / warm invoke", lambda s: s["first_invoke_ms"]["p50"] / s["probe_warm_invoke_ms"]["p50"], "x"),
    ("tree USS", lambda s: s["tree_uss_mb"], "MB"),
    ("USS per model added since last stage", lambda s: s["uss_per_added_model_mb"], "MB"),
    ("USS of one model's own processes (median)", lambda s: s["model_uss"]["median_mb"], "MB"),
    ("ListModels: pages / all listed", lambda s: f"{s['list'].get('pages')} / {s['list']['ok']}", ""),
)


DENSITY_NOTES = """## What is private per model (measured step by step, one model's processes after one invoke)

USS of a model's processes (the launcher MMS started, until the `java-asks-template` run; the server the
template forked; the worker MMS's server forks), from `/proc/<pid>/smaps`, MB = 10^6 bytes:

| step | launcher | server | worker | total |
|---|---:|---:|---:|---:|
| main (before; per process not split) | | | | 21.8 |
| + TorchScript's per-process set-up run in the template | 4.74 | 5.72 | 8.43 | 18.9 |
| + modules imported after the fork preloaded (see below) | 4.74 | 3.92 | 6.72 | 15.4 |
| + launcher on built-in modules only (`posix`, `_socket`, `_signal`, its own JSON) | 3.19 | 3.89 | 6.72 | 13.8 |
| worker script compiled once in the template (tried, not kept: 0.04 MB each) | 3.18 | 3.85 | 6.68 | 13.7 |
| + the launcher execs `/bin/sh waiter.sh` once the fork is made (the `waiter` run) | 0.23 | 3.9 | 6.7 | 10.8 |
| + MMS's Java asks the template itself: no launcher per model (the `java-asks-template` run) | | 3.9 | 7.2 | 11.1 |

Preloaded: `numpy.random` (the children's reseed imported it), `multiprocessing.popen_fork`, `hmac`,
`secrets`, `handler.model_config`.

What is left: in each, libpython's writable data (0.5-1.3 MB: reference counts of static objects such
as small ints and `None`; Python 3.12's immortal objects would stop those writes), obmalloc arenas and the
glibc heap (reference counts of frozen objects touched, new objects placed in the template's half-used
pools); one thread each, so no thread stacks to trim.

USS is not all a model costs the host. `/proc/meminfo` over 99 models loaded and invoked (the `waiter`
code, MiB a model): AnonPages +16.0, PageTables +1.1, Slab +0.6, MemAvailable -17.6. The 5-6 MiB of
anonymous memory beyond USS are pages the model's server wrote after the template's fork and then
shares with the worker MMS's script forks from it for its connection: private to the model, counted in
neither process's USS. Tried: serving that connection in the server process itself (no second fork):
MemAvailable -12.7 MiB a model, but not kept, because MMS recovers a worker that timed out or was
killed by reconnecting to the server, which would then no longer listen. At 17.6 MiB a model, 1,000
models need about 17 GiB beside serve's own.

Since the `java-asks-template` run a model has no launcher (or waiter) process, and Java keeps no pipes
for it and no reader threads for its worker's FIFOs (Java's threads at 1,000 models: 4,024, from 7,023):
the host's available memory falls 16.3 MiB a model over 1,000 models, against 17.7 in the run before
(the row above; others share this host, so it is approximate): about 16 GiB for 1,000 models.
"""


def markdown(runs: dict[str, dict[str, Any]]) -> str:
    sections = []
    for label, result in runs.items():
        stages = result["stages"]
        stop = f"; **{result['stopped']}**" if result.get("stopped") else ""
        rows = []
        for title, value, unit in ROWS:
            cells = [value(s) for s in stages]
            rows.append([title, *(f"{v:.2f} {unit}".strip() if isinstance(v, float) else str(v) for v in cells)])
        added = [s["resident"] - p for s, p in zip(stages, [0, *(s["resident"] for s in stages)], strict=False)]
        host = [(s["available_gib_before"] - s["available_gib"]) * 1024 / n for s, n in zip(stages, added, strict=True)]
        rows.append(["host memory available, less per model added (MiB; a shared host)", *(f"{v:.1f}" for v in host)])
        section = [
            f"## {label}",
            "",
            *header_lines(result),
            f"- most models resident: {result['resident_max']}; every answer correct: {result['answered_all']}; "
            f"processes left after stop: {len(result['leftover_processes'])}{stop}",
            "",
            *table(["measure", *(f"{s['resident']} resident" for s in stages)], rows),
        ]
        if len(stages) >= 2:
            first, last = stages[0], stages[-1]
            ratio = f"{last['resident']} vs {first['resident']} resident (p50 ratio; goal <= 1.25)"
            flat = [
                f"{title}: {last[key]['p50'] / first[key]['p50']:.2f}x"
                for title, key in (("LoadModel", "load_s"), ("UnloadModel", "unload_s"), ("GetModel", "get_ms"))
            ]
            flat.append(f"invoke: {last['invoke_ms']['p50'] / first['invoke_ms']['p50']:.2f}x")
            section += ["", f"Flatness, {ratio}:", "", *bullets(flat)]
        sections.append(section)
    return document(
        "scale: many resident models behind one serve",
        None,
        "Tiny scripted `nn.Linear(16, 4)` models loaded one after another, each invoked once (answer checked). "
        f"At each stage: {PROBES} probes (LoadModel of one more model, its first invoke, 5 warm invokes, "
        f"GetModel, UnloadModel), {WARM_INVOKES} warm invokes of random resident models, tree USS of `serve`, "
        f"ListModels followed page by page ({PAGE_LIMIT} a page). MB = 10^6 bytes. `python -m bench --only scale "
        "--label before|after [--stages 10,100,400,1000]`.",
        *sections,
        DENSITY_NOTES.strip("\n"),
    )


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = (
        ("LoadModel p50 (ms)", lambda s: s["load_s"]["p50"] * 1e3),
        ("USS per resident model (MB)", lambda s: s["uss_per_model_mb"]),
        ("first invoke after load p50 (ms)", lambda s: s["first_invoke_ms"]["p50"]),
    )
    for ax, (title, value) in zip(axes, panels, strict=True):
        for label, result in runs.items():
            xs = [s["resident"] for s in result["stages"]]
            ax.plot(xs, [value(s) for s in result["stages"]], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("resident models")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
