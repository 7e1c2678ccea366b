"""The servers compared, each started on 127.0.0.1 in its own scratch folder and stopped by pid with its children.

Every server gets the same model directories (``<models>/<name>/model/model.pt``; TorchServe a ``.mar``
packed from the same file) and the same JSON body, and loads each model into its own worker where it has
workers (one per model). ``pids()`` gives the roots of its process tree, over which USS is summed.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import psutil

from bench.common import JSON_TYPE, tail
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalServer, free_port

APPS = Path(__file__).resolve().parent / "apps"
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 300.0
STOP_GRACE_S = 10.0


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout=60.0
) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection; (status, body) for every status; OSError when nobody answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(peer: Peer, alive: Any, timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``GET /ping`` until 200; ``alive()`` false (the process exited) or the timeout raises with the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{peer.label} exited before it was ready:\n{peer.diagnostics()}")
        with contextlib.suppress(OSError):
            if request(peer.port, "GET", "/ping", timeout=2)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{peer.label} was not ready within {timeout:.0f} s:\n{peer.diagnostics()}")


def stop_tree(pids: list[int], grace: float = STOP_GRACE_S) -> int:
    """Wait up to ``grace`` for the processes to exit, then SIGKILL what is left, by pid; returns how many."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


class Peer:
    """What every server offers the benchmark."""

    key = ""
    label = ""
    port = 0

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch / self.key
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.log_path = self.scratch / "server.log"
        self.log: IO[bytes] | None = None
        self.settings: dict[str, Any] = {}

    def diagnostics(self) -> str:
        """The last lines of this server's own output and of its main log files, for a failure message."""
        parts = [f"--- {self.log_path.name} ---\n{tail(self.log_path, 20)}"]
        for log in sorted((self.scratch / "logs").glob("*_log.log")):
            parts.append(f"--- {log.name} ---\n{tail(log, 20)}")
        return "\n".join(parts)

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """The roots of this server's process tree."""
        raise NotImplementedError

    def load_request(self, name: str, model_dir: Path) -> tuple[int, bytes]:
        """LoadModel as this server takes it: (status, body)."""
        raise NotImplementedError

    def invoke_path(self, name: str) -> str:
        return f"/models/{name}/invoke"

    def load(self, name: str, model_dir: Path) -> float:
        """LoadModel ``name``; the seconds until its 200 (the model is ready); raises on any other answer."""
        start = time.perf_counter()
        status, body = self.load_request(name, model_dir)
        elapsed = time.perf_counter() - start
        if status != 200:
            raise RuntimeError(
                f"{self.label}: LoadModel {name} answered {status}: {body[:500]!r}\n{self.diagnostics()}"
            )
        return elapsed

    def tree(self) -> list[psutil.Process]:
        return [p for pid in self.pids() for p in processes.tree(pid)]

    def tree_uss(self) -> int:
        """USS in bytes summed over the whole process tree."""
        return processes.uss(self.tree())

    def open_log(self) -> IO[bytes]:
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        return self.log

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class OneProcess(Peer):
    """Every model in one Python process behind a plain aiohttp app (``apps/one_process_app.py``)."""

    key = "one_process"
    label = "one-process aiohttp app"

    def __init__(self, scratch: Path, python: Path, threads: int = 1) -> None:
        super().__init__(scratch)
        self.python = python
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None
        self.settings = {"torch_threads": threads, "python": str(python)}

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        command = [str(self.python), str(APPS / "one_process_app.py"), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--threads", str(self.threads)],
            env=env,
            cwd=self.scratch,
            stdout=self.open_log(),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_ready(self, lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            pids = [p.pid for p in self.tree()]
            self.process.send_signal(signal.SIGTERM)
            stop_tree(pids)
            self.process.wait(5)
        self.close_log()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None and self.process.poll() is None else []

    def load_request(self, name: str, model_dir: Path) -> tuple[int, bytes]:
        body = json.dumps({"model_name": name, "url": str(model_dir)}).encode()
        return request(self.port, "POST", "/models", body, {"Content-Type": JSON_TYPE}, timeout=LOAD_TIMEOUT_S)


class JavaServer(Peer):
    """A Java front started by a ``--start`` command that returns; found again through its pid file in TMPDIR."""

    command = ""

    def __init__(self, scratch: Path) -> None:
        super().__init__(scratch)
        self.tmp = self.scratch / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.java: int | None = None
        self.management_port = 0

    def environment(self) -> dict[str, str]:
        logs = str(self.scratch / "logs")
        return {
            **os.environ,
            "TMPDIR": str(self.tmp),
            "TEMP": str(self.tmp),
            "LOG_LOCATION": logs,
            "METRICS_LOCATION": logs,
        }

    def start_command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.port, self.management_port = free_port(), free_port()
        done = subprocess.run(
            self.start_command(),
            env=self.environment(),
            cwd=self.scratch,
            stdout=self.open_log(),
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.label}: {self.command} --start exited with {done.returncode}\n{self.diagnostics()}"
            )
        pid_file = self.tmp / ".model_server.pid"
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.java = int(pid_file.read_text().split()[0])
        wait_ready(self, lambda: psutil.pid_exists(self.java))

    def stop(self) -> None:
        """``--stop`` under the same TMPDIR, then whatever of the tree is left, by pid."""
        pids = [p.pid for p in self.tree()]
        if pids:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    [self.command, "--stop"],
                    env=self.environment(),
                    cwd=self.scratch,
                    stdout=self.log or subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    timeout=30,
                )
            stop_tree(pids)
        self.java = None
        self.close_log()

    def pids(self) -> list[int]:
        return [self.java] if self.java is not None and psutil.pid_exists(self.java) else []

    def register(self, query: dict[str, str]) -> tuple[int, bytes]:
        path = "/models?" + urlencode({**query, "initial_workers": "1", "synchronous": "true"})
        return request(self.management_port, "POST", path, timeout=LOAD_TIMEOUT_S)


class PlainMMS(JavaServer):
    """multi-model-server 1.1.11 as it comes, with the minimal function-form handler and no front."""

    key = "mms"
    label = "MMS, minimal handler"

    def __init__(self, scratch: Path) -> None:
        super().__init__(scratch)
        self.command = shutil.which("multi-model-server", path=os.path.dirname(sys.executable)) or "multi-model-server"
        self.handler_path = self.scratch / "handler"
        self.handler_path.mkdir(exist_ok=True)
        shutil.copy(APPS / "minimal_handler.py", self.handler_path)
        self.settings = {"handler": "minimal_handler:handle", "jvm": "MMS defaults", "torch_threads": "1 (MMS worker)"}

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["PYTHONPATH"] = str(self.handler_path)
        env.pop("OMP_NUM_THREADS", None)  # the MMS worker sets 1 when unset
        return env

    def start_command(self) -> list[str]:
        config = self.scratch / "mms.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{self.management_port}\n"
            "model_store=/\n"
            "default_workers_per_model=1\n"
            "default_service_handler=minimal_handler:handle\n"
        )
        return [self.command, "--start", "--mms-config", str(config), "--model-store", "/"]

    def load_request(self, name: str, model_dir: Path) -> tuple[int, bytes]:
        return self.register({"url": str(model_dir), "model_name": name})


class TorchServe(JavaServer):
    """TorchServe 0.12 from the peers' venv, each model a ``.mar`` with the minimal function-form handler."""

    key = "torchserve"
    label = "TorchServe 0.12"

    def __init__(self, scratch: Path, venv: Path, store: Path) -> None:
        super().__init__(scratch)
        self.command = str(venv / "bin" / "torchserve")
        self.store = store
        self.settings = {
            "handler": "minimal_handler.py (function form)",
            "jvm": "TorchServe defaults",
            "torch_threads": "1 (OMP_NUM_THREADS=1 set for it; its default is every core per worker)",
            "system_metrics": "disabled (no collector process every minute)",
        }

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "OMP_NUM_THREADS": "1"}

    def start_command(self) -> list[str]:
        config = self.scratch / "ts.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{self.management_port}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n"
            "grpc_inference_address=127.0.0.1\n"
            "grpc_management_address=127.0.0.1\n"
            f"grpc_inference_port={free_port()}\n"
            f"grpc_management_port={free_port()}\n"
            "default_workers_per_model=1\n"
            "disable_system_metrics=true\n"
        )
        return [
            self.command,
            "--start",
            "--ncs",
            "--disable-token-auth",
            "--enable-model-api",
            "--model-store",
            str(self.store),
            "--ts-config",
            str(config),
        ]

    def load_request(self, name: str, model_dir: Path) -> tuple[int, bytes]:
        return self.register({"url": f"{name}.mar", "model_name": name})

    def invoke_path(self, name: str) -> str:
        return f"/predictions/{name}"


class TorchMME(Peer):
    """This project: ``torch-mme serve`` (aiohttp front -> MMS -> handler), as ``LocalServer`` starts it."""

    key = "torch_mme"
    label = "torch-mme serve"

    def __init__(self, scratch: Path, models_root: Path) -> None:
        super().__init__(scratch)
        self.server = LocalServer(str(models_root))
        self.settings = {"torch_threads": "1 (MMS worker)", "jvm": "torch-mme's JVM_FLAGS"}

    def start(self) -> None:
        self.server.log = self.open_log()
        self.server.start()
        self.port = self.server.port

    def stop(self) -> None:
        pids = [p.pid for p in self.tree()]
        self.server.stop()
        stop_tree(pids, grace=5)
        self.close_log()

    def pids(self) -> list[int]:
        process = self.server.process
        return [process.pid] if process is not None and process.poll() is None else []

    def load_request(self, name: str, model_dir: Path) -> tuple[int, bytes]:
        body = json.dumps({"model_name": name, "url": str(model_dir)}).encode()
        return request(self.port, "POST", "/models", body, {"Content-Type": JSON_TYPE}, timeout=LOAD_TIMEOUT_S)


def make_archives(venv: Path, models: dict[str, Path], store: Path, scratch: Path) -> float:
    """One ``.mar`` per model with ``torch-model-archiver`` (4 at a time); returns the seconds it took."""
    store.mkdir(parents=True, exist_ok=True)
    archiver = str(venv / "bin" / "torch-model-archiver")
    handler = APPS / "minimal_handler.py"
    began = time.perf_counter()
    pending = list(models.items())
    running: list[tuple[str, subprocess.Popen[bytes]]] = []
    log_path = scratch / "archiver.log"
    with open(log_path, "ab") as log:
        while pending or running:
            while pending and len(running) < 4:
                name, model_dir = pending.pop(0)
                command = [archiver, "--model-name", name, "--version", "1.0", "--serialized-file"]
                command += [str(model_dir / "model.pt"), "--handler", str(handler), "--export-path", str(store), "-f"]
                running.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
            name, proc = running.pop(0)
            if proc.wait(120) != 0:
                raise RuntimeError(f"torch-model-archiver failed for {name}:\n{tail(log_path)}")
    return time.perf_counter() - began
