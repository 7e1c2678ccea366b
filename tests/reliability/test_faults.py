"""Faults: a worker or a model's processes killed mid-request, a model that hangs, SIGTERM, a full or read-only disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.test_endpoint import invoke, publish
from tests.integration.test_memory import SLOW
from tests.reliability.conftest import (
    Client,
    assert_short_json_error,
    descendants,
    record,
    start_server,
    stop_server,
    write_script_model,
    write_torchscript,
)
from torch_mme.runtime import processes
from torch_mme.tools.local_server import LocalEndpoint

TIMEOUT_S = 3
RECOVERY_S = 60.0


def _wait_ok(server, name: str, body: bytes, deadline_s: float = RECOVERY_S) -> float:
    """Poll until the model answers 200 again; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        status, _, _ = server.invoke(name, body, "application/json")
        if status == 200:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{name} did not recover within {deadline_s} s")


class Stream:
    """Invokes a model over and over from a thread, counting statuses: what a bystander sees."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = Client(self.port, timeout=TIMEOUT_S + 30)
        while not self._stop.is_set():
            try:
                status, _, _ = client.request(
                    "POST", f"/models/{self.name}/invoke", b"[[1, 2, 3]]", {"Content-Type": "application/json"}
                )
                self.statuses[status] = self.statuses.get(status, 0) + 1
            except Exception as exc:  # noqa: BLE001
                self.errors.append(repr(exc))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(TIMEOUT_S + 35)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_script_model(root / "slow" / "model", SLOW)
    write_torchscript(root / "bystander" / "model")
    server = start_server(root, tmp_path_factory.mktemp("logs"), args=["--timeout", str(TIMEOUT_S)])
    try:
        for name in ("slow", "bystander"):
            assert server.load(name, str(root / name / "model"))[0] == 200
        yield {"server": server, "root": root}
    finally:
        stop_server(server)


def _in_background(fn):
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def test_a_worker_killed_mid_request_errors_that_request_and_recovers(world):
    server = world["server"]
    with Stream(server.port, "bystander") as bystander:
        thread, result = _in_background(lambda: (time.monotonic(), server.invoke("slow", b"[2.0]", "application/json")))
        time.sleep(0.7)
        family = processes.model_processes(server.process.pid, "slow")
        pids = {p.pid for p in family}
        # the worker serving the request: the leaf forked by the model's Python server (MMS only reconnects to
        # that server; it does not start it again if the server itself dies: see the report)
        victims = [p for p in family if p.ppid() in pids and not any(c.pid in pids for c in p.children())]
        assert len(victims) == 1, [(p.pid, p.ppid()) for p in family]
        started = time.monotonic()
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.send_signal(signal.SIGKILL)
        thread.join(TIMEOUT_S + 35)
        answered_s = time.monotonic() - started
        assert result, "the request in flight got no answer"
        status, _, body = result[0][1]
        assert status >= 500, (status, body)
        assert_short_json_error(status, body)
        assert answered_s < TIMEOUT_S + 30
        recovered_s = _wait_ok(server, "slow", b"[0.0]")
    assert bystander.errors == [] and set(bystander.statuses) == {200}, (bystander.statuses, bystander.errors[:3])
    record(
        "worker_sigkill",
        faults_injected=len(victims),
        killed_request_status=status,
        killed_request_answered_s=round(answered_s, 2),
        recovered_s=round(recovered_s, 2),
        bystander_requests=sum(bystander.statuses.values()),
        requests=sum(bystander.statuses.values()) + 1,
    )


def test_a_model_whose_processes_all_die_is_restarted(world):
    """Every process of the model SIGKILLed (its server, the process MMS watches for it, and its worker, one
    process group): MMS alone would only retry a dead socket, queueing every request until the timeout;
    serve's watchdog restarts it."""
    server = world["server"]
    with Stream(server.port, "bystander") as bystander:
        thread, result = _in_background(lambda: server.invoke("slow", b"[2.0]", "application/json"))
        time.sleep(0.7)
        [victim] = processes.started_for(server.process.pid, "slow")  # the top of the model's processes
        started = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)  # the server leads the group its worker is in
        thread.join(TIMEOUT_S + 35)
        in_flight_s = time.monotonic() - started
        assert result, "the request in flight got no answer"
        status, _, body = result[0]
        assert status >= 500 and in_flight_s < 15, (status, body, in_flight_s)
        assert_short_json_error(status, body)
        answers: dict[int, int] = {}
        while time.monotonic() - started < RECOVERY_S:
            asked = time.monotonic()
            status, _, body = server.invoke("slow", b"[0.0]", "application/json")
            assert time.monotonic() - asked < 15, "a request waited for a dead model"
            answers[status] = answers.get(status, 0) + 1
            if status == 200:
                break
            assert_short_json_error(status, body)
            time.sleep(0.2)
        recovered_s = time.monotonic() - started
        assert status == 200, answers
        assert set(answers) <= {200, 500, 503}, answers
    assert bystander.errors == [] and set(bystander.statuses) == {200}, (bystander.statuses, bystander.errors[:3])
    record(
        "model_processes_killed",
        faults_injected=1,
        in_flight_status=result[0][0],
        in_flight_answered_s=round(in_flight_s, 2),
        statuses_until_recovered=str(dict(sorted(answers.items()))),
        recovered_s=round(recovered_s, 2),
        requests=sum(bystander.statuses.values()) + sum(answers.values()) + 1,
    )


def test_a_hanging_model_is_bounded_by_the_timeout_and_recovers(world):
    server = world["server"]
    with Stream(server.port, "bystander") as bystander:
        started = time.monotonic()
        status, _, body = server.invoke("slow", b"[600.0]", "application/json")
        answered_s = time.monotonic() - started
        assert status >= 500 or status == 408, (status, body)
        assert_short_json_error(status, body)
        assert answered_s < TIMEOUT_S + 15, answered_s
        recovered_s = _wait_ok(server, "slow", b"[0.0]")
    assert bystander.errors == [] and set(bystander.statuses) == {200}, (bystander.statuses, bystander.errors[:3])
    record(
        "hanging_model",
        faults_injected=1,
        timeout_s=TIMEOUT_S,
        hung_request_status=status,
        hung_request_answered_s=round(answered_s, 2),
        recovered_s=round(recovered_s, 2),
        requests=sum(bystander.statuses.values()) + 1,
    )


def test_sigterm_to_serve_leaves_no_process_behind(tmp_path):
    for name in ("a", "b"):
        write_torchscript(tmp_path / name / "model")
    server = start_server(tmp_path, tmp_path)
    try:
        for name in ("a", "b"):
            assert server.load(name, str(tmp_path / name / "model"))[0] == 200
            assert server.invoke(name, b"[[1, 2, 3]]", "application/json")[0] == 200
        family = [server.process.pid, *(p.pid for p in descendants(server.process.pid))]
        assert len(family) >= 4  # serve, Java, the template, model processes
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(10)
        alive = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        while alive and time.monotonic() - started < 10:
            time.sleep(0.1)
            alive = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        stopped_s = time.monotonic() - started
        assert alive == [], [psutil.Process(p).cmdline() for p in alive]
        assert stopped_s < 10
        orphans = [
            p.pid for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
        ]
        assert orphans == []
    finally:
        stop_server(server)
    record("sigterm", faults_injected=1, processes=len(family), all_gone_s=round(stopped_s, 2))


@contextlib.contextmanager
def _small_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if os.geteuid() != 0 or subprocess.run(mount).returncode:
        pytest.skip("needs root to mount a small tmpfs for a full disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_then_read_only_models_root_is_a_clear_error_and_other_models_keep_serving(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    write_torchscript(tmp_path / "build" / "small")
    publish(store, "small.tar.gz", tmp_path / "build" / "small")
    write_torchscript(tmp_path / "build" / "big")
    (tmp_path / "build" / "big" / "weights.bin").write_bytes(os.urandom(3 * 2**20))
    publish(store, "big.tar.gz", tmp_path / "build" / "big")
    publish(store, "later.tar.gz", tmp_path / "build" / "small")
    with (
        _small_filesystem(tmp_path / "models", "2m") as models_root,
        open(tmp_path / "endpoint.log", "wb") as log,
        LocalEndpoint(str(store), str(models_root), log=log) as endpoint,
    ):
        client = endpoint.client()
        assert (
            invoke(client, "small.tar.gz", b"[[1, 2, 3]]", "application/json")["ResponseMetadata"]["HTTPStatusCode"]
            == 200
        )
        errors = []
        with pytest.raises((client.exceptions.ValidationError, client.exceptions.ServiceUnavailable)) as caught:
            invoke(client, "big.tar.gz", b"[[1, 2, 3]]", "application/json")
        errors.append(caught.value.response["Error"]["Message"])
        assert "No space left" in errors[-1], errors
        assert (
            invoke(client, "small.tar.gz", b"[[1, 2, 3]]", "application/json")["ResponseMetadata"]["HTTPStatusCode"]
            == 200
        )
        assert subprocess.run(["mount", "-o", "remount,ro", str(models_root)]).returncode == 0
        with pytest.raises((client.exceptions.ValidationError, client.exceptions.ServiceUnavailable)) as caught:
            invoke(client, "later.tar.gz", b"[[1, 2, 3]]", "application/json")
        errors.append(caught.value.response["Error"]["Message"])
        assert "Read-only" in errors[-1], errors
        for message in errors:
            assert "Traceback" not in message and len(message) < 1000
        assert (
            invoke(client, "small.tar.gz", b"[[1, 2, 3]]", "application/json")["ResponseMetadata"]["HTTPStatusCode"]
            == 200
        )
        assert [p.name for p in models_root.iterdir() if not p.name.startswith("small")] == []
    record("full_and_read_only_disk", faults_injected=2, requests=5, errors=json.dumps(errors)[:400])
