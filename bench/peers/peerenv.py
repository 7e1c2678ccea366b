"""The peers' own virtualenv: TorchServe 0.12 (and its archiver) and aiohttp, installed from PyPI once and reused.

It lives in a cache folder (``python -m bench --peers-venv DIR``, else ``~/.cache/torch-mme/bench-venv``), outside the
repository. ``torch==2.13.0`` is installed first and pinned, so no peer pulls another torch (pip's
find-links then take the local CPU wheel where there is one); PyYAML is needed by TorchServe 0.12 but not
declared. aiohttp and numpy are pinned to the versions this project runs on, so the one-process app and
``torch-mme serve`` use the same HTTP library. A marker file records what was installed: a venv with another
marker (or none, an interrupted install) is rebuilt.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from torch_mme.settings import user_cache_dir

TORCH = "torch==2.13.0"
PEERS = ("torchserve==0.12.0", "torch-model-archiver==0.12.0", "pyyaml")
MARKER = ".torch-mme-bench.json"
INSTALL_TIMEOUT_S = 1200


VENV_DIR: Path | None = None
"""Where the peers' venv lives when set (``python -m bench --peers-venv DIR``); else the user's cache folder."""


def location() -> Path:
    """Where the peers' venv lives."""
    if VENV_DIR is not None:
        return VENV_DIR.expanduser()
    return Path(user_cache_dir()) / "bench-venv"


def requirements() -> list[str]:
    """What the venv holds: torch first, then the peers, aiohttp and numpy at this project's versions."""
    pinned = []
    for dist in ("aiohttp", "numpy"):
        try:
            pinned.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(dist)
    return [TORCH, *PEERS, *pinned]


def python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure(log=sys.stderr) -> Path:
    """The peers' venv, created and installed when missing or different; returns its folder."""
    venv = location()
    wanted = requirements()
    marker = venv / MARKER
    try:
        if json.loads(marker.read_text()).get("requirements") == wanted and python(venv).exists():
            return venv
    except (OSError, ValueError):
        pass
    print(f"peers: creating {venv} ({', '.join(wanted)}); once, a few minutes", file=log)
    began = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-qq"]
    subprocess.run([*pip, TORCH], check=True, timeout=INSTALL_TIMEOUT_S)
    # torch pinned again: a peer asking for another torch fails the install instead of replacing it
    subprocess.run([*pip, TORCH, *wanted[1:]], check=True, timeout=INSTALL_TIMEOUT_S)
    marker.write_text(json.dumps({"requirements": wanted, "install_s": time.perf_counter() - began}) + "\n")
    print(f"peers: venv ready in {time.perf_counter() - began:.0f} s", file=log)
    return venv


def versions(venv: Path) -> dict[str, str]:
    """The installed versions of what shapes the peers' numbers, read from the venv."""
    script = (
        "import importlib.metadata as m, json, platform\n"
        "out = {'python': platform.python_version()}\n"
        "for d in ('torch', 'torchserve', 'torch-model-archiver', 'aiohttp', 'numpy', 'PyYAML'):\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python(venv)), "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


if __name__ == "__main__":
    print(ensure())
