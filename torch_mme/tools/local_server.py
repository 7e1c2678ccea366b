"""Run ``torch-mme serve`` as a child process: for the demo, the tests and the benchmarks.

Binds 127.0.0.1 on a free port below 32768 (MMS refuses higher ones), waits
for a real ``/ping``, and stops the server by its process id; ``serve`` itself
takes its Java and workers down with it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import IO, Any

from typing_extensions import Self

from torch_mme import settings

PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port in 20000-32000 that nobody listens on right now."""
    for _ in range(200):
        port = random.randint(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-32000")


class _ChildServer:
    """A ``torch-mme`` subcommand run as a child process, ready once its ``/ping`` answers 200."""

    kind = "torch-mme"

    def __init__(
        self,
        command: list[str],
        port: int,
        env: dict[str, str] | None,
        log: IO[Any] | None,
        start_timeout: float,
        cwd: str | None = None,
    ) -> None:
        self.command = command
        self.cwd = cwd
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**settings.environment(), **(env or {})}
        self.log = log
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.process = subprocess.Popen(
            self.command, env=self.env, stdout=self.log or subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.cwd
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode} before it was ready")
            if self._ping() == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} was not ready within {self.start_timeout:.0f} s")

    def _ping(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalServer(_ChildServer):
    """``with LocalServer(models_root) as server: server.load("name", path)``"""

    kind = "torch-mme serve"

    def __init__(
        self,
        models_root: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        log: IO[Any] | None = None,
        start_timeout: float = 120.0,
        cwd: str | None = None,
    ) -> None:
        self.models_root = os.path.abspath(models_root)
        self.args = args or []
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            "torch_mme.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-dir",
            self.models_root,
            *self.args,
        ]
        super().__init__(command, port, env, log, start_timeout, cwd)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request; returns (status, headers, body) for every status, errors included."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def load(self, name: str, model_dir: str) -> tuple[int, dict[str, Any]]:
        """LoadModel, as SageMaker sends it."""
        status, _, body = self.request(
            "POST",
            "/models",
            json.dumps({"model_name": name, "url": model_dir}).encode(),
            {"Content-Type": "application/json"},
            timeout=600,
        )
        return status, json.loads(body or b"{}")

    def invoke(self, name: str, body: bytes, content_type: str, accept: str | None = None) -> tuple[int, str, bytes]:
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        status, response_headers, data = self.request("POST", f"/models/{name}/invoke", body, headers)
        content = next((v for k, v in response_headers.items() if k.lower() == "content-type"), "")
        return status, content, data

    def unload(self, name: str) -> int:
        return self.request("DELETE", f"/models/{name}", timeout=120)[0]


class LocalEndpoint(_ChildServer):
    """``torch-mme endpoint`` as a child process: ``with LocalEndpoint(store) as endpoint: endpoint.client()``."""

    kind = "torch-mme endpoint"

    def __init__(
        self,
        model_store: str,
        models_root: str,
        container_url: str | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        log: IO[Any] | None = None,
        start_timeout: float = 120.0,
        port: int | None = None,
        container_models_root: str | None = None,
    ) -> None:
        port = port or free_port()
        command = [
            sys.executable,
            "-m",
            "torch_mme.cli",
            "endpoint",
            "--model-store",
            model_store,
            "--port",
            str(port),
            "--models-root",
            models_root,
            *(args or []),
        ]
        if container_url:
            command += [
                "--container-url",
                container_url,
                "--container-models-root",
                container_models_root or models_root,
            ]
        super().__init__(command, port, env, log, start_timeout)

    def client(self) -> Any:
        """A boto3 sagemaker-runtime client for this endpoint (any credentials; no retries: errors show as they are)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=120),
        )

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return response.read().decode()
