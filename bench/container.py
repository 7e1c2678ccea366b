"""``python -m bench.container [--quick] [--out bench/results]``: the image's size and build and start times.

Measured on a copy of the build inputs (docker-build.sh, container/, setup.py,
handler/, torch_mme/ ...), so the working tree is never touched:

- cold build: ``docker-build.sh --no-cache`` from a filled wheelhouse, the base
  image present (what a CI machine pays after the engine's setup);
- warm rebuilds: nothing changed; a ``.py`` file in torch_mme/ touched (mtime
  only); and its content changed (a code-only change: only the project's layer
  is rebuilt);
- image size, and the largest layers;
- ``podman run`` to the first 200 from /ping, and the first LoadModel of a
  tiny TorchScript model inside the container.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, finish, new_result, write_model, write_results
from bench.report import document, pairs
from container.engine import CONTAINER_MODELS_ROOT, ContainerServer, Engine, find_engine

TAG = "torch-mme:bench"
BUILD_INPUTS = [
    "docker-build.sh",
    ".dockerignore",
    "setup.py",
    "README.md",
    "pyproject.toml",
    "handler",
    "torch_mme",
    "examples",
    "container",
]
CODE_FILE = "torch_mme/__init__.py"
BASE_IMAGE = "python:3.11-slim-bookworm"
DESCRIPTION = "org.opencontainers.image.description"


def base_note(description: str, size: int) -> str:
    """Says so when the base is scripts/container-env.sh's stand-in, whose size differs from the official image's."""
    if "stand-in" not in description:
        return ""
    return (
        " (a stand-in built by scripts/container-env.sh from a debootstrapped Debian bookworm with Debian's"
        f" python3.11, as no registry is reachable here: its {size / 1e6:.0f} MB make the image larger than on the"
        " official base)"
    )


def snapshot(dest: Path) -> Path:
    """A copy of what the build reads, without caches or wheels."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl")
    dest.mkdir(parents=True)
    for name in BUILD_INPUTS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def timed_build(engine: Engine, root: Path, log, extra: list[str] | None = None) -> float:
    print(f"  build {' '.join(extra or [])} ...", file=sys.stderr)
    return engine.build(TAG, log, extra=extra, root=root)


def builds(engine: Engine, root: Path, log) -> dict[str, float]:
    """Cold, then the three warm rebuilds; seconds each."""
    engine.docker_build(["--fill-only"], log, root=root)  # not timed: the wheelhouse is a download, filled once
    code = root / CODE_FILE
    times = {"cold_no_cache_s": timed_build(engine, root, log, ["--no-cache"])}
    times["rebuild_unchanged_s"] = timed_build(engine, root, log)
    os.utime(code)
    times["rebuild_after_touch_s"] = timed_build(engine, root, log)
    code.write_text(code.read_text() + f"\n# bench.container: a code-only change at {time.time()}\n")
    times["rebuild_after_code_change_s"] = timed_build(engine, root, log)
    return times


def layers(engine: Engine) -> list[dict[str, Any]]:
    """The image's layers: bytes and the instruction that made each."""
    history = engine.run("history", "--human=false", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", TAG)
    rows = []
    for line in history.stdout.splitlines():
        size, _, created_by = line.partition("\t")
        command = created_by.split(" -c ", 1)[-1]  # without "|N ARG=... /bin/bash -o pipefail -c"
        rows.append({"bytes": _bytes(size), "created_by": " ".join(command.split())[:100]})
    return rows


def largest(rows: list[dict[str, Any]], count: int = 4) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: -row["bytes"])[:count]


def project_layer_bytes(rows: list[dict[str, Any]]) -> int:
    """The layer a code-only change rebuilds: the one that installs this project's wheel."""
    return sum(row["bytes"] for row in rows if "pip wheel" in row["created_by"])


def _bytes(text: str) -> int:
    number, _, unit = text.strip().partition(" ")
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}.get(unit or "B", 1)
    return int(float(number) * scale)


def starts(engine: Engine, models_root: Path, runs: int) -> dict[str, Any]:
    """``run`` to a healthy /ping, ``runs`` times; the first LoadModel of a tiny model in each."""
    ready, load = [], []
    for i in range(runs):
        name = f"tiny{i}"
        write_model(models_root / name / "model", seed=i)
        with ContainerServer(engine, TAG, str(models_root)) as server:
            ready.append(server.ready_s)
            began = time.perf_counter()
            status, _ = server.load(name, f"{CONTAINER_MODELS_ROOT}/{name}/model")
            load.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"LoadModel answered {status}:\n{server.logs()}")
    return {
        "runs": runs,
        "run_to_ping_s": ready,
        "run_to_ping_median_s": statistics.median(ready),
        "first_load_s": load,
        "first_load_median_s": statistics.median(load),
    }


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    began = time.perf_counter()
    result = new_result("container", quick)
    setup_began = time.perf_counter()
    engine = find_engine()
    result["engine"] = {
        "name": engine.name,
        "version": engine.run("version", "--format", "{{.Client.Version}}").stdout.strip(),
        "setup_s": time.perf_counter() - setup_began,
        "base_description": engine.inspect(BASE_IMAGE)["Config"].get("Labels", {}).get(DESCRIPTION, ""),
        "base_bytes": engine.image_size(BASE_IMAGE),
    }
    with tempfile.TemporaryDirectory(prefix="torch-mme-bench-container-") as tmp:
        work = Path(tmp)
        root = snapshot(work / "src")
        (work / "models").mkdir(mode=0o755)
        log_path = work / "build.log"
        try:
            with open(log_path, "w") as log:
                result["build"] = builds(engine, root, log)
        except RuntimeError as exc:
            raise SystemExit(f"{exc}\n{log_path.read_text()[-4000:]}") from None
        rows = layers(engine)
        result["image"] = {
            "tag": TAG,
            "bytes": engine.image_size(TAG),
            "project_layer_bytes": project_layer_bytes(rows),
            "largest_layers": largest(rows),
        }
        result["start"] = starts(engine, work / "models", runs=1 if quick else 5)
    engine.run("rmi", TAG, check=False)
    if engine.name == "podman":  # the scratch store is ours alone: drop the layers the cold build replaced
        engine.run("image", "prune", "-f", timeout=600, check=False)
    finish(result, began)
    write_results(result, report(result), Path(out_dir))
    return result


def report(result: dict[str, Any]) -> str:
    b, image, start, eng = result["build"], result["image"], result["start"], result["engine"]
    measures = [
        ("image size", f"{image['bytes'] / 1e9:.2f} GB"),
        ("cold build (`--no-cache`, wheelhouse filled, base image present)", f"{b['cold_no_cache_s']:.1f} s"),
        ("rebuild, nothing changed", f"{b['rebuild_unchanged_s']:.1f} s"),
        (f"rebuild after `touch {CODE_FILE}` (mtime only)", f"{b['rebuild_after_touch_s']:.1f} s"),
        (f"rebuild after a code-only change to `{CODE_FILE}`", f"{b['rebuild_after_code_change_s']:.1f} s"),
        ("the one layer a code-only change rebuilds (and pushes)", f"{image['project_layer_bytes'] / 1e3:.0f} kB"),
        (
            f"`{eng['name']} run` to the first 200 from /ping (median of {start['runs']})",
            f"{start['run_to_ping_median_s']:.2f} s",
        ),
        (
            "first LoadModel of a tiny TorchScript model in the container (median)",
            f"{start['first_load_median_s']:.2f} s",
        ),
    ]
    layers = [(f"{layer['bytes'] / 1e6:.0f} MB", f"`{layer['created_by']}`") for layer in image["largest_layers"]]
    return document(
        "Container image: size, build and start times",
        result,
        pairs(measures, ("measure", "value")),
        "Largest layers:",
        pairs(layers, ("size", "made by")),
        [
            "Build times are docker-build.sh's wall time, its wheelhouse check included (pip's resolver, about",
            "1.5 s). The layer cache keys COPY on content, so a touch alone rebuilds nothing; a code change",
            "rebuilds only the project's layer, never the torch/MMS venv or Java. Sizes are uncompressed.",
        ],
        facts=[
            f"engine: {eng['name']} {eng['version']}; base image {BASE_IMAGE}"
            + base_note(eng["base_description"], eng["base_bytes"])
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.container", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one start instead of five")
    parser.add_argument("--out", default="bench/results", help="folder for container.json/.md (bench/results)")
    args = parser.parse_args(argv)
    run(quick=args.quick, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
