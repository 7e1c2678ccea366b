"""Start-up failures, clean shutdown, and two servers side by side."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil

from tests.integration.conftest import descendants, write_torchscript
from torch_mme.tools.local_server import LocalServer, free_port


def cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # a zombie that its parent has not collected yet
        return []


def serve_command(port: int, models_root: str) -> list[str]:
    return [sys.executable, "-m", "torch_mme.cli", "serve", "--port", str(port), "--model-dir", models_root]


def test_sigterm_stops_java_and_every_worker(tmp_path):
    write_torchscript(tmp_path / "a" / "model")
    write_torchscript(tmp_path / "b" / "model")
    server = LocalServer(str(tmp_path)).start()
    try:
        assert server.load("a", str(tmp_path / "a" / "model"))[0] == 200
        assert server.load("b", str(tmp_path / "b" / "model"))[0] == 200
        tree = descendants(server.process.pid)
        names = " ".join(" ".join(cmdline(p)) for p in tree)
        assert "com.amazonaws.ml.mms.ModelServer" in names and "model_service_worker" in names
    finally:
        started = time.monotonic()
        status = server.stop(timeout=10)
    assert status == 0
    assert time.monotonic() - started < 10
    _, alive = psutil.wait_procs(tree, timeout=2)
    assert alive == [], [cmdline(p) for p in alive]


def test_ctrl_c_stops_everything(tmp_path):
    server = LocalServer(str(tmp_path)).start()
    tree = descendants(server.process.pid)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(10) == 0
    _, alive = psutil.wait_procs(tree, timeout=2)
    assert alive == []


def test_a_taken_port_is_a_clear_error(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = subprocess.run(serve_command(port, str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr and "Address already in use" in result.stderr


def test_missing_java_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = os.path.dirname(sys.executable)  # the venv: multi-model-server, but no java
    assert shutil.which("java", path=env["PATH"]) is None
    result = subprocess.run(
        serve_command(free_port(), str(tmp_path)), capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    assert "Java is not installed" in result.stderr


def test_two_instances_on_one_machine_do_not_interfere(tmp_path):
    write_torchscript(tmp_path / "same" / "model", seed=1)
    with LocalServer(str(tmp_path)) as first, LocalServer(str(tmp_path)) as second:
        for server in (first, second):
            assert server.load("same", str(tmp_path / "same" / "model"))[0] == 200
        assert first.unload("same") == 200
        assert second.invoke("same", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert first.invoke("same", b"[[1, 2, 3]]", "application/json")[0] == 404
        second_tree = descendants(second.process.pid)
        first.stop()
        assert all(p.is_running() for p in second_tree)
        assert second.invoke("same", b"[[1, 2, 3]]", "application/json")[0] == 200
