"""The image from Python, for the container tests and ``python -m bench.container``.

Finds an engine (a Docker engine that answers, else podman set up by
``scripts/container-env.sh``), builds the image with ``docker-build.sh`` from a
cached wheelhouse, and runs it as :class:`ContainerServer`: ``LocalServer``'s
HTTP helpers (``load``, ``invoke``, ``unload``) against a container with a host
folder mounted read-only at ``/opt/ml/models``, stopped and removed by its id.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from torch_mme import settings
from torch_mme.tools.local_server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = Path(settings.container_scratch())
WHEELHOUSE = SCRATCH / "wheelhouse"
LOCAL_TORCH_WHEELS = Path("/opt/wheels")
TORCH_VERSION = "2.13.0"
CONTAINER_MODELS_ROOT = "/opt/ml/models"


class EngineUnavailable(RuntimeError):
    """No container engine can be made to run here; the message says why."""


class Engine:
    """A container engine CLI (``docker`` or ``podman``) and the environment it needs."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``<engine> ARGS``; output captured; raises with stderr when it fails and ``check``."""
        done = subprocess.run(
            [self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{self.name} {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def inspect(self, ref: str) -> dict[str, Any]:
        """``<engine> inspect REF``: the image's or container's description."""
        return json.loads(self.run("inspect", ref).stdout)[0]

    def image_size(self, tag: str) -> int:
        return int(self.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())

    def build(self, tag: str, log: IO[str], extra: list[str] | None = None, root: Path = ROOT) -> float:
        """Build ``tag`` offline from the cached wheelhouse (filled first when incomplete); returns seconds."""
        args = ["--engine", self.name, "--tag", tag]
        if self.name == "podman":
            args += ["--network", "host"]  # RUN steps (apt for Java) share the host's network: no bridge left behind
        return self.docker_build([*args, *(extra or [])], log, root)

    def docker_build(self, args: list[str], log: IO[str], root: Path = ROOT, timeout: float = 1200.0) -> float:
        """``docker-build.sh --wheelhouse <cached> --fill-wheelhouse ARGS``; returns seconds; raises when it fails."""
        command = ["bash", str(root / "docker-build.sh"), "--wheelhouse", str(WHEELHOUSE), "--fill-wheelhouse"]
        command += [*torch_wheel_args(), *args]
        env = {**self.env, "PYTHON": sys.executable}
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        began = time.perf_counter()
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"docker-build.sh failed ({done.returncode}); see {log.name}")
        return time.perf_counter() - began


def torch_wheel_args() -> list[str]:
    """``--torch-wheel`` for a local CPU wheel of the pinned torch where the machine has one."""
    wheels = sorted(LOCAL_TORCH_WHEELS.glob(f"torch-{TORCH_VERSION}+cpu-cp311-cp311-*.whl"))
    return ["--torch-wheel", str(wheels[0])] if wheels else []


def find_engine() -> Engine:
    """Docker when its engine answers; else podman, set up by scripts/container-env.sh (installs, configures,
    builds the base images). Raises :class:`EngineUnavailable` with the reason."""
    if shutil.which("docker") and _answers(["docker", "info"]):
        return Engine("docker", settings.environment())
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "container-env.sh")], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise EngineUnavailable(reason[0])
    env = settings.environment()
    env.update(re.findall(r"^export (\w+)='([^']*)'$", done.stdout, flags=re.MULTILINE))
    return Engine("podman", env)


def _answers(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class ContainerServer(LocalServer):
    """The image running with ``models_root`` mounted read-only at /opt/ml/models and its port on 127.0.0.1.

    ``with ContainerServer(engine, image, models_root) as server: server.load(name, "/opt/ml/models/...")``
    """

    def __init__(
        self,
        engine: Engine,
        image: str,
        models_root: str,
        run_args: list[str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(models_root, start_timeout=start_timeout)
        self.engine = engine
        self.image = image
        self.run_args = run_args or []
        self.container_id: str | None = None

    def start(self) -> "ContainerServer":
        network = ["--network", "slirp4netns"] if self.engine.name == "podman" else []  # no iptables chains left
        self.started = time.perf_counter()
        self.container_id = self.engine.run(
            "run",
            "-d",
            *network,
            "-p",
            f"127.0.0.1:{self.port}:8080",
            "-v",
            f"{self.models_root}:{CONTAINER_MODELS_ROOT}:ro",
            *self.run_args,
            self.image,
        ).stdout.strip()
        try:
            self.ready_s = self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> float:
        """Poll /ping until 200; returns seconds since ``start`` ran the container."""
        deadline = time.monotonic() + self.start_timeout
        next_state_check = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/ping", timeout=2)[0] == 200:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            if time.monotonic() > next_state_check:  # `inspect` costs a process: once a second
                next_state_check = time.monotonic() + 1.0
                if self.state().get("Status") == "exited":
                    raise RuntimeError(f"the container exited before it was ready:\n{self.logs()}")
            time.sleep(0.05)
        raise RuntimeError(f"the container did not answer /ping within {self.start_timeout:.0f} s:\n{self.logs()}")

    def state(self) -> dict[str, Any]:
        return self.engine.inspect(self.container_id)["State"] if self.container_id else {}

    def logs(self, tail: int = 60) -> str:
        if not self.container_id:
            return ""
        done = self.engine.run("logs", "--tail", str(tail), self.container_id, check=False)
        return done.stdout + done.stderr

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop (SIGTERM, SIGKILL after ``timeout``) and remove the container; returns its exit code."""
        if not self.container_id:
            return None
        try:
            self.engine.run("stop", "-t", str(int(timeout)), self.container_id, timeout=timeout + 30, check=False)
            return self.state().get("ExitCode")
        finally:
            self.engine.run("rm", "-f", self.container_id, timeout=60, check=False)
            self.container_id = None
