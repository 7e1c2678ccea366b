"""Wiring the template into MMS: a launcher as MMS's "python", and a supervisor that keeps the template alive.

MMS's Java, with torch-mme's classes (``mms_java``), asks the template for
each model's server itself (``java/TemplateProcess.java``) and starts no
process. Where it cannot (the template down, or MMS's own classes running),
MMS runs ``<python> model_service_worker.py ...``, where ``<python>`` is the
interpreter of the ``multi-model-server`` script (``sys.executable``).
``serve`` puts a ``multi-model-server`` of its own first on PATH that sets
``sys.executable`` to the launcher before starting MMS (``serve.write_mms_shim``).
If the template dies, the launcher falls back to a fresh Python (today's slow
path) until the supervisor has restarted it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from importlib import resources

from torch_mme.settings import TEMPLATE_SOCKET

log = logging.getLogger("torch_mme.runtime.forking")

SOCKET_ENV = TEMPLATE_SOCKET
READY_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 1.0


def install(run_dir: str) -> tuple[str, dict[str, str]]:
    """Write the launcher into ``<run_dir>/bin``: its path (MMS's "python") and the environment the template reads."""
    bin_dir = os.path.join(run_dir, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    launcher = os.path.join(bin_dir, "mms-python")
    waiter = os.path.join(bin_dir, "waiter.sh")
    runtime = resources.files("torch_mme.runtime")
    write_executable(waiter, (runtime / "waiter.sh").read_text())
    # launcher.py copied with its shebang, REAL_PYTHON and WAITER filled in: it runs -IS, importing nothing to find them
    source = (runtime / "launcher.py").read_text().replace("@REAL_PYTHON@", sys.executable)
    write_executable(launcher, f"#!{sys.executable} -IS\n" + source.replace("@WAITER@", waiter))
    private = os.path.join(run_dir, "template")  # the template listens only in a folder no one else can enter
    os.makedirs(private, mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)
    return launcher, {SOCKET_ENV: os.path.join(private, "template.sock")}


def write_executable(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


class TemplateSupervisor:
    """Starts the template, restarts it if it dies, stops it with the server."""

    def __init__(self, socket_path: str, stopping: threading.Event) -> None:
        self.socket_path = socket_path
        self.stopping = stopping
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        threading.Thread(target=self._watch, name="template-watch", daemon=True).start()

    def _spawn(self) -> None:
        started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "torch_mme.runtime.template", self.socket_path])
        while not os.path.exists(self.socket_path):
            if self.process.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
                log.warning("the template did not start; model processes start the slow way (a fresh Python)")
                return
            time.sleep(0.02)
        log.info(
            "template ready in %.2f s (pid %d): model processes fork from it",
            time.monotonic() - started,
            self.process.pid,
        )

    def _watch(self) -> None:
        while not self.stopping.is_set():
            process = self.process
            status = process.wait() if process is not None else None
            if self.stopping.is_set():
                return
            self.restarts += 1
            log.warning("the template exited (%s); loads take the slow path until it is back; restarting", status)
            if os.path.exists(self.socket_path):
                os.remove(self.socket_path)
            time.sleep(min(RESTART_BACKOFF_S * self.restarts, 30.0))
            if not self.stopping.is_set():
                self._spawn()
