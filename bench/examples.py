"""The four example models through ``torch-mme serve`` vs. in-process, and their LoadModel times, in one run.

The models are the ones ``torch_mme.tools.examples`` builds (tabular regressor, image classifier,
safetensors classifier, all-MiniLM-L6-v2 text embeddings), each written to ``<root>/<name>/model``
and served by one ``LocalServer`` whose ``TORCH_MME_DEPS_DIR`` is a fresh empty folder.

1. **LoadModel, cold**: each model loaded once (``POST /models`` until 200). The dependency folder
   is empty, so each ``code/requirements.txt`` runs pip; the text model's pulls transformers from
   pip's configured index (the server's ``--timeout 300`` covers it). pip's own cache is left as
   configured; how many files it downloaded and how many it took from its cache is recorded.
2. **LoadModel, warm**: every model unloaded (``DELETE``) and loaded again with the same folder;
   the server log must then say ``requirements of <name> satisfied by <folder> (no install)``
   and show exactly one ``installing requirements of <name>`` (the cold load's): pip did not run.
3. **invoke latency**: per model, its own sample body, Content-Type and Accept, over ONE keep-alive
   ``http.client`` connection to ``/models/<name>/invoke``, next to ``Model.decode -> predict ->
   encode`` in a child Python loaded by ``handler.model.load`` (which runs the model's
   ``code/inference.py`` hooks exactly as the server's worker does). The child runs with
   ``OMP_NUM_THREADS=1``, as the server's model processes do, and activates the deps folder the
   server installed via ``handler.requirements.prepare`` (it must find it complete: no pip), so the
   text model's transformers is importable there while the benchmark's own process never has it.
   In-process and serve chunks alternate (in, serve, in, ..., in) on the noisy shared machine; both
   answers are checked with the example's own check before timing.

Before any timing the server's JVM gets a warm-up of requests to the regressor: MMS keeps getting
faster over its first ~1000 requests, which would otherwise count against the model measured first.
"""

from __future__ import annotations

import argparse
import base64
import gc
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.common import REPO_ROOT, finish, new_result, summarize, tail, write_results
from bench.report import document, table, us
from torch_mme.tools import examples
from torch_mme.tools.local_server import LocalServer

LOAD_TIMEOUT_S = 300
"""serve's ``--timeout``: the text model's cold load installs transformers (as the integration test does)."""
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Sizes:
    """Requests per model after its warm-up (the text model, ~10 ms a forward, gets its own counts)."""

    requests: int
    warmup: int
    text_requests: int
    text_warmup: int
    jvm_warmup: int
    rounds: int
    """Serve chunks per model, between ``rounds + 1`` in-process chunks."""


FULL = Sizes(requests=500, warmup=50, text_requests=300, text_warmup=30, jvm_warmup=1000, rounds=4)
QUICK = Sizes(requests=100, warmup=20, text_requests=60, text_warmup=10, jvm_warmup=300, rounds=2)


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal chunk sizes."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# ---------------------------------------------------------------- the in-process side (a child Python)


def child_main(model_dir: str, name: str) -> int:
    """``python -m bench.examples --child MODEL_DIR NAME``: load like a worker, then time on request.

    Reads JSON commands from stdin, one a line, answers one JSON line each on stdout:
    ``{"op": "time", "body": b64, "content_type": ..., "accept": ..., "count": N}`` -> ``{"samples": [s, ...]}``;
    ``{"op": "answer", ...}`` -> ``{"body": b64, "content_type": ...}``. The first line out says how it loaded.
    """
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="child %(name)s: %(message)s")
    started = time.perf_counter()
    import torch

    from handler import model as handler_model
    from handler import requirements
    from torch_mme.settings import Settings

    settings = Settings.from_env()
    deps = requirements.prepare(model_dir, settings, name)
    prepared = time.perf_counter()
    model = handler_model.load(model_dir, torch.device("cpu"), default_accept=settings.default_accept)
    loaded = time.perf_counter()
    out = sys.stdout
    _send(
        out,
        {
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "deps_folder": deps.path if deps else None,
            "pip_ran": bool(deps and deps.installed),
            "prepare_s": prepared - started,
            "load_s": loaded - prepared,
            "transformers": _version_of("transformers"),
        },
    )
    clock = time.perf_counter
    for line in sys.stdin:
        command = json.loads(line)
        body, content_type, accept = base64.b64decode(command["body"]), command["content_type"], command["accept"]
        if command["op"] == "answer":
            answer, kind = model.encode(model.predict(model.decode(body, content_type)), accept)
            _send(out, {"body": base64.b64encode(answer).decode(), "content_type": kind})
            continue
        samples = []
        gc.collect()
        for _ in range(command["count"]):
            start = clock()
            model.encode(model.predict(model.decode(body, content_type)), accept)
            samples.append(clock() - start)
        _send(out, {"samples": samples})
    return 0


def _version_of(module: str) -> str | None:
    loaded = sys.modules.get(module)
    return getattr(loaded, "__version__", None) if loaded else None


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


class InProcess:
    """The child Python holding one model, driven line by line."""

    def __init__(self, model_dir: Path, name: str, deps_dir: Path, log: IO[Any]) -> None:
        env = {**os.environ, **CHILD_ENV, "TORCH_MME_DEPS_DIR": str(deps_dir), "PYTHONPATH": str(REPO_ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.examples", "--child", str(model_dir), name],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        self.info = self._receive()

    def _receive(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the in-process child exited with {self.process.wait()} (see the bench log)")
        return json.loads(line)

    def call(self, op: str, example: examples.ExampleModel, count: int = 0) -> dict[str, Any]:
        command = {
            "op": op,
            "body": base64.b64encode(example.sample_body).decode(),
            "content_type": example.content_type,
            "accept": example.accept,
            "count": count,
        }
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._receive()

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


# ---------------------------------------------------------------- the serve side


class Invoker:
    """One keep-alive connection to ``/models/<name>/invoke`` with the example's own body and headers."""

    def __init__(self, port: int, example: examples.ExampleModel) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.path = f"/models/{example.name}/invoke"
        self.body = example.sample_body
        self.headers = {"Content-Type": example.content_type, "Accept": example.accept}
        self.opened = 0

    def once(self) -> tuple[int, bytes]:
        if self.connection.sock is None:
            self.opened += 1
        self.connection.request("POST", self.path, body=self.body, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, response.read()

    def time(self, count: int) -> list[float]:
        samples = []
        clock = time.perf_counter
        gc.collect()
        for _ in range(count):
            start = clock()
            status, data = self.once()
            samples.append(clock() - start)
            if status != 200:
                raise RuntimeError(f"{self.path} answered {status}: {data[:300]!r}")
        return samples

    def close(self) -> None:
        self.connection.close()


def measure_model(
    server: LocalServer, example: examples.ExampleModel, deps_dir: Path, sizes: Sizes, log: IO[Any]
) -> dict[str, Any]:
    """Alternating in-process and serve chunks for one model; both answers checked first."""
    text = example.name == examples.EMBEDDINGS_NAME
    requests, warmup = (sizes.text_requests, sizes.text_warmup) if text else (sizes.requests, sizes.warmup)
    child = InProcess(example.model_dir, example.name, deps_dir, log)
    invoker = Invoker(server.port, example)
    try:
        status, answer = invoker.once()
        problem = example.check(answer) if status == 200 else f"status {status}: {answer[:300]!r}"
        if problem:
            raise RuntimeError(f"{example.name} through serve: {problem}")
        local = base64.b64decode(child.call("answer", example)["body"])
        problem = example.check(local)
        if problem:
            raise RuntimeError(f"{example.name} in-process: {problem}")
        child.call("time", example, warmup)
        invoker.time(warmup)
        inproc_chunks, serve_chunks = [], []
        inproc_sizes, serve_sizes = split(requests, sizes.rounds + 1), split(requests, sizes.rounds)
        for i in range(sizes.rounds + 1):
            inproc_chunks.append(child.call("time", example, inproc_sizes[i])["samples"])
            if i < sizes.rounds:
                serve_chunks.append(invoker.time(serve_sizes[i]))
    finally:
        invoker.close()
        child.close()
    in_process = summarize([s for c in inproc_chunks for s in c], 1e3, "ms")
    serve = summarize([s for c in serve_chunks for s in c], 1e3, "ms")
    serve["connections_opened"] = invoker.opened
    per_round = [
        float(np.percentile(serve_chunks[i], 50))
        / ((float(np.percentile(inproc_chunks[i], 50)) + float(np.percentile(inproc_chunks[i + 1], 50))) / 2)
        for i in range(sizes.rounds)
    ]
    return {
        "content_type": example.content_type,
        "accept": example.accept,
        "body_bytes": len(example.sample_body),
        "warmup": warmup,
        "in_process": in_process,
        "serve": serve,
        "ratio": {
            "p50": serve["p50"] / in_process["p50"],
            "p99": serve["p99"] / in_process["p99"],
            "per_round_p50": per_round,
        },
        "child": child.info,
    }


def timed_load(server: LocalServer, example: examples.ExampleModel) -> float:
    started = time.perf_counter()
    status, reply = server.load(example.name, str(example.model_dir))
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"LoadModel {example.name} answered {status}: {reply}")
    return elapsed


def pip_summary(deps_dir: Path, code_dir: Path) -> dict[str, Any]:
    """What pip did for one model's requirements: its folder, and from its install log what it fetched."""
    from handler.requirements import INSTALL_LOG, MARKER, requirements_key

    folder = deps_dir / requirements_key(str(code_dir))
    summary: dict[str, Any] = {"folder": folder.name, "complete": (folder / MARKER).is_file()}
    try:
        output = (folder / INSTALL_LOG).read_text(errors="replace")
    except OSError:
        return summary
    installed = [line for line in output.splitlines() if line.startswith("Successfully installed")]
    indexes = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Looking in indexes:")]
    summary.update(
        downloaded=len(re.findall(r"^\s*Downloading \S+", output, re.M)),
        from_pip_cache=len(re.findall(r"^\s*Using cached \S+", output, re.M)),
        local_files=len(re.findall(r"^Processing /\S+", output, re.M)),
        already_satisfied=len(re.findall(r"^Requirement already satisfied", output, re.M)),
        installed=installed[-1].split()[2:] if installed else [],
        indexes=indexes[-1] if indexes else "",
        folder_mib=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20,
    )
    return summary


def log_facts(log_text: str, name: str) -> dict[str, Any]:
    """From the server log: how many times pip ran for ``name``, how many loads reused a folder, pip's time."""
    pip_times = re.findall(rf"requirements of {re.escape(name)} installed into \S+ in ([0-9.]+) s", log_text)
    return {
        "installs": log_text.count(f"installing requirements of {name} "),
        "satisfied_by": log_text.count(f"requirements of {name} satisfied by "),
        "pip_s": [float(t) for t in pip_times],
    }


# ---------------------------------------------------------------- the run


def build(root: Path) -> tuple[list[examples.ExampleModel], dict[str, str], float]:
    started = time.perf_counter()
    built, skipped = [], {}
    for name, example in examples.EXAMPLES.items():
        try:
            built.append(example.build(root / name / "model"))  # text: no code/wheels, so pip uses the index
        except examples.ExampleUnavailable as exc:
            skipped[name] = str(exc)
    return built, skipped, time.perf_counter() - started


def measure(result: dict[str, Any], sizes: Sizes, tmp: Path) -> None:
    models_root, deps_dir = tmp / "models", tmp / "deps"
    deps_dir.mkdir()
    built, skipped, result["build_s"] = build(models_root)
    result["skipped"] = dict(skipped)
    result["models"] = {e.name: {"describe": e.describe, "installs": e.installs} for e in built}
    print(f"built {len(built)} example models in {result['build_s']:.1f} s", file=sys.stderr)

    log_path, child_log_path = tmp / "serve.log", tmp / "children.log"
    with open(log_path, "wb") as log, open(child_log_path, "w") as child_log:
        server = LocalServer(
            str(models_root),
            env={"TORCH_MME_DEPS_DIR": str(deps_dir)},
            log=log,
            args=["--timeout", str(LOAD_TIMEOUT_S)],
        )
        try:
            started = time.perf_counter()
            server.start()
            result["server_start_s"] = time.perf_counter() - started
            loaded = []
            for example in built:
                print(f"LoadModel {example.name} (cold deps folder) ...", file=sys.stderr)
                try:
                    seconds = timed_load(server, example)
                except RuntimeError as exc:
                    if example.name == examples.EMBEDDINGS_NAME and "DependencyInstallError" in str(exc):
                        skipped[example.name] = f"transformers could not be installed (no index?): {exc}"
                        result["skipped"] = dict(skipped)
                        continue
                    raise
                result["models"][example.name]["load_cold_s"] = seconds
                loaded.append(example)
            for example in loaded:
                if server.unload(example.name) != 200:
                    raise RuntimeError(f"DELETE /models/{example.name} failed")
            for example in loaded:
                print(f"LoadModel {example.name} (warm deps folder, after DELETE) ...", file=sys.stderr)
                result["models"][example.name]["load_warm_s"] = timed_load(server, example)

            log.flush()
            log_text = log_path.read_text(errors="replace")
            for example in loaded:
                entry = result["models"][example.name]
                entry["server_log"] = log_facts(log_text, example.name)
                if (example.model_dir / "code" / "requirements.txt").is_file():
                    entry["pip"] = pip_summary(deps_dir, example.model_dir / "code")
                entry["warm_load_without_pip"] = entry["server_log"]["installs"] <= 1 and (
                    entry["server_log"]["satisfied_by"] >= 1 or "pip" not in entry
                )

            if loaded:
                jvm = Invoker(server.port, loaded[0])
                try:
                    started = time.perf_counter()
                    jvm.time(sizes.jvm_warmup)
                    result["jvm_warmup_s"] = time.perf_counter() - started
                finally:
                    jvm.close()
            for example in loaded:
                print(f"timing {example.name}: in-process and serve, alternating", file=sys.stderr)
                result["models"][example.name].update(measure_model(server, example, deps_dir, sizes, child_log))
        except BaseException:
            log.flush()
            child_log.flush()
            print(f"--- serve log (last lines) ---\n{tail(log_path)}", file=sys.stderr)
            print(f"--- in-process children (last lines) ---\n{tail(child_log_path)}", file=sys.stderr)
            raise
        finally:
            server.stop()


def fmt_ms(value: float) -> str:
    """Milliseconds as ``830 µs`` or ``12.41 ms``."""
    return us(value * 1000)


def markdown(result: dict[str, Any]) -> str:
    sizes = result["config"]
    models = {name: m for name, m in result["models"].items() if "serve" in m}
    start, end = result["machine"].get("loadavg_start"), result["machine"].get("loadavg_end")
    load = f"{start[0]:.1f} -> {end[0]:.1f} on {result['machine']['cpu_count']} CPUs" if start and end else "unknown"
    latency = [
        [
            name,
            f"`{m['content_type']}`",
            f"{m['body_bytes']} B",
            *(fmt_ms(m[side][q]) for side in ("in_process", "serve") for q in ("p50", "p99")),
            f"**{m['ratio']['p50']:.2f}x**",
            f"{m['ratio']['p99']:.2f}x",
        ]
        for name, m in models.items()
    ]
    loads = [_load_row(name, m) for name, m in result["models"].items() if "load_cold_s" in m]
    text = result["models"].get(examples.EMBEDDINGS_NAME, {})
    text_note = ""
    if "pip" in text:
        pip = text["pip"]
        text_note = (
            f"The text model's cold load installed {', '.join(pip.get('installed', [])) or '?'} into its folder "
            f"({pip.get('folder_mib', 0):.0f} MiB) from pip's configured indexes ({pip.get('indexes') or '?'}); "
            "the in-process child found that "
            f"folder complete (pip ran there: {text['child']['pip_ran']}) and imported transformers "
            f"{text['child']['transformers']} from it."
        )
    return document(
        "example models: `torch-mme serve` vs. in-process, and LoadModel with a cold and a warm deps folder",
        result,
        table(
            ["model", "Content-Type", "body", "in-process p50", "p99", "serve p50", "p99"]
            + ["serve / in-process p50", "p99"],
            latency,
            "llrrrrrrr",
        ),
        "Per-chunk p50 ratios (each serve chunk vs. the in-process chunks on either side): "
        + "; ".join(f"{n} " + ", ".join(f"{r:.2f}x" for r in m["ratio"]["per_round_p50"]) for n, m in models.items())
        + ". In-process children ran with torch threads = "
        + ", ".join(sorted({str(m["child"]["torch_threads"]) for m in models.values()}))
        + f". The machine is shared (load average {load}): p99 is noise-dominated, p50 is what to compare.",
        "## LoadModel (POST /models until 200)",
        table(
            ["model", "installs at load", "cold deps folder", "warm (same folder, after DELETE)"]
            + ["pip on the warm load", "in-process `handler.model.load`"],
            loads,
            "llrrlr",
        ),
        text_note,
        *(f"**{name} skipped**: {why}" for name, why in result["skipped"].items()),
        facts=[
            f"models: the four of `torch_mme.tools.examples`, built in {result['build_s']:.1f} s; one `torch-mme "
            f"serve` (1 worker per model, `--timeout {LOAD_TIMEOUT_S}`), `TORCH_MME_DEPS_DIR` a fresh empty folder",
            f"serve: one keep-alive `http.client` connection per model to `/models/<name>/invoke`, the model's own "
            f"sample body and Content-Type, Accept as given; {sizes['requests']} requests after {sizes['warmup']} "
            f"warm-up ({sizes['text_requests']} after {sizes['text_warmup']} for the text model), after "
            f"{sizes['jvm_warmup']} JVM warm-up requests to the first model",
            "in-process: `handler.model.load` (the model's `code/inference.py` hooks, as the worker runs them), then "
            "`decode -> predict -> encode` per call, in a child Python with **`OMP_NUM_THREADS=1`** (as the server's "
            "model processes) that activates the deps folder the server installed (`handler.requirements.prepare`); "
            f"in-process and serve chunks alternate ({sizes['rounds']} serve chunks between {sizes['rounds'] + 1} "
            "in-process ones); both answers pass the example's check",
        ],
    )


def _load_row(name: str, m: dict[str, Any]) -> list[str]:
    """One model's LoadModel row: what its load installed, cold and warm times, whether pip ran warm."""
    facts = m["server_log"]
    pip = m.get("pip")
    if pip is None:
        installs, warm_pip = "nothing (no requirements.txt)", "-"
    else:
        fetched = (f"; pip {facts['pip_s'][0]:.1f} s" if facts["pip_s"] else "") + (
            f", {pip.get('downloaded', 0)} files downloaded, {pip.get('local_files', 0)} from local wheel "
            f"folders, {pip.get('from_pip_cache', 0)} from pip's cache"
        )
        installs = (m["installs"] or "requirements satisfied by the base environment") + fetched
        warm_pip = (
            f'no: log says "satisfied by" ({facts["satisfied_by"]}x), pip ran {facts["installs"]}x in all'
            if m["warm_load_without_pip"]
            else f"**yes** (pip ran {facts['installs']}x)"
        )
    child = m.get("child", {})
    inproc = f"{child['load_s']:.2f} s" if "load_s" in child else "-"
    return [name, installs, f"{m['load_cold_s']:.2f} s", f"{m['load_warm_s']:.2f} s", warm_pip, inproc]


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Measure everything in one run; write ``examples.json`` and ``.md`` to ``out_dir``; return the result."""
    sizes = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("examples", quick)
    result["config"] = {**asdict(sizes), "load_timeout_s": LOAD_TIMEOUT_S, "in_process_env": CHILD_ENV}
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp:
        measure(result, sizes, Path(tmp))
    finish(result, began)
    write_results(result, markdown(result), Path(out_dir))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.examples")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "NAME"), help="internal: the in-process side")
    args = parser.parse_args(argv)
    if args.child:
        return child_main(*args.child)
    parser.error("run it as `python -m bench --only examples`")
    return 2


if __name__ == "__main__":
    sys.exit(main())
