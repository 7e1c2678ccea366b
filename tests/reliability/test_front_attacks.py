"""Attacks on the public port: what a client sends can run no code, reach no MMS route, exhaust no memory.

Each test is the proof of concept of an attack that worked before the front
was allow-listed and bounded (issue: "Nothing a client sends can run code,
exhaust memory or wedge MMS"); canary files show where code would have run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.reliability.conftest import assert_short_json_error, record, start_server, stop_server, write_script_model

SUM_MODEL = """
import torch

def model_fn(model_dir):
    return torch.nn.Identity()

def predict_fn(data, model):
    return data.float().sum().reshape(1)
"""
EVIL_HANDLER = """
def handle(data, context):
    with open({canary!r}, "w") as f:
        f.write("code ran")
    return ["pwned"]
"""
SIX_MIB = 6 * 2**20


def _npy(values: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ones(values, dtype=np.float32))
    return buffer.getvalue()


LARGE_BODY = _npy((SIX_MIB - 256) // 4)
assert len(LARGE_BODY) <= SIX_MIB


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are; return everything the server answers before it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    None,
                )
                if length is not None and len(rest) >= length:
                    break
        return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def mms_models(server) -> list[str]:
    status, _, body = server.request("GET", "/models")
    assert status == 200, body
    return sorted(m["modelName"] for m in json.loads(body)["models"])


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    outside = tmp_path_factory.mktemp("outside")
    write_script_model(root / "sum", SUM_MODEL)
    server = start_server(root, tmp_path_factory.mktemp("logs"))
    assert server.load("sum", str(root / "sum"))[0] == 200
    yield server, root, outside
    stop_server(server)


def _evil_folder(outside: Path, name: str) -> tuple[Path, Path]:
    folder = outside / name
    folder.mkdir()
    canary = outside / f"{name}.canary"
    (folder / "evil.py").write_text(EVIL_HANDLER.format(canary=str(canary)))
    return folder, canary


def test_mms_management_routes_cannot_register_a_handler_of_the_clients_choice(attacked):
    server, _, outside = attacked
    folder, canary = _evil_folder(outside, "trailing")
    query = f"url={folder}&model_name=evil&handler=evil:handle&initial_workers=1&synchronous=true"
    attempts = [
        ("POST", f"/models/?{query}", None),  # the trailing slash MMS registers with
        ("POST", f"/models//?{query}", None),
        ("POST", "/models/", json.dumps({"url": str(folder), "model_name": "evil", "handler": "evil:handle"})),
        ("POST", f"/models?{query}", None),  # the contract's route, with MMS's extra parameters
        ("POST", "/models", json.dumps({"url": "http://127.0.0.1:9/evil.mar", "model_name": "evil"})),
        ("POST", "/models", json.dumps({"url": str(folder), "model_name": "evil"})),  # outside the root
    ]
    for method, path, body in attempts:
        status, _, answer = server.request(method, path, body.encode() if body else None)
        assert status in (400, 404, 405), (path, status, answer)
        assert_short_json_error(status, answer)
    status, _, _ = server.invoke("evil", b"[1]", "application/json")
    assert status in (400, 404)
    assert mms_models(server) == ["sum"]
    assert not canary.exists(), "a client-chosen handler ran"
    record("front: management routes", requests=len(attempts) + 2, answers_lost=0)


def test_routes_outside_the_contract_never_reach_mms(attacked):
    server, _, _ = attacked
    workers_before = len(json.loads(server.request("GET", "/models/sum")[2])["workers"])
    attempts = [
        ("PUT", "/models/sum?min_worker=6&synchronous=true", 405),
        ("PUT", "/models/sum", 405),
        ("POST", "/models/sum", 405),
        ("GET", "/models/sum/invoke", 405),
        ("GET", "/api-description", 404),
        ("OPTIONS", "/", 404),
        ("POST", "/predictions/sum", 404),
        ("POST", "/invocations", 404),
        ("GET", "/models/sum/extra", 404),
        ("DELETE", "/models", 405),
    ]
    for method, path, expected in attempts:
        status, _, answer = server.request(method, path, b"[1]" if method in ("POST", "PUT") else None)
        assert status == expected, (method, path, status, answer)
        assert_short_json_error(status, answer)
    details = json.loads(server.request("GET", "/models/sum")[2])
    assert len(details["workers"]) == workers_before == 1
    assert server.invoke("sum", b"[1, 2]", "application/json")[0] == 200
    record("front: other routes", requests=len(attempts) + 2, answers_lost=0)


def test_a_model_name_cannot_smuggle_a_second_request_to_mms(attacked):
    server, _, outside = attacked
    folder, canary = _evil_folder(outside, "smuggled")
    smuggled = (
        f"x HTTP/1.1\r\nHost: mms\r\nContent-Length: 0\r\n\r\n"
        f"POST /models?url={folder}&model_name=evil&handler=evil:handle&initial_workers=1 HTTP/1.1\r\nHost: mms\r\n\r\n"
    )
    encoded = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in smuggled)
    for method, suffix in (("DELETE", ""), ("GET", ""), ("POST", "/invoke")):
        status, _, answer = server.request(method, f"/models/{encoded}{suffix}", b"[1]" if method == "POST" else None)
        assert status == 400, (method, status, answer)
        assert_short_json_error(status, answer)
    time.sleep(1.0)
    assert mms_models(server) == ["sum"]
    assert not canary.exists()
    record("front: smuggling", requests=4, answers_lost=0)


def test_load_model_takes_only_a_name_and_a_url(attacked):
    server, root, _ = attacked
    write_script_model(root / "extra", SUM_MODEL)
    for extra in ({"initial_workers": 6}, {"handler": "evil:handle"}, {"batch_size": 8}, {"runtime": "python"}):
        body = json.dumps({"model_name": "extra", "url": str(root / "extra"), **extra}).encode()
        status, _, answer = server.request("POST", "/models", body, {"Content-Type": "application/json"})
        assert status == 400, (extra, status, answer)
        assert next(iter(extra)) in assert_short_json_error(status, answer)["message"]
    assert mms_models(server) == ["sum"]
    for url in (f"{root}/extra\x00", f"{root}/extra\n", "x" * 5000):
        body = json.dumps({"model_name": "extra", "url": url}).encode()
        status, _, answer = server.request("POST", "/models", body, {"Content-Type": "application/json"})
        assert status == 400, (url[:50], status, answer)
        assert_short_json_error(status, answer)
    for name in ("sum\n", "sum\r\nX: y", "../sum", "sum x", "é", ""):
        body = json.dumps({"model_name": name, "url": str(root / "extra")}).encode()
        status, _, answer = server.request("POST", "/models", body, {"Content-Type": "application/json"})
        assert status == 400, (name, status, answer)
    assert mms_models(server) == ["sum"]
    record("front: LoadModel parameters", requests=13, answers_lost=0)


def test_malformed_http_is_a_json_400_and_never_reaches_mms(attacked):
    server, _, _ = attacked
    port = server.port
    cases = [
        "POST /models/sum/invoke HTTP/1.1\r\nHost: x\r\nX-Name: caf\u00e9\u2603\r\n\r\n".encode(),
        b"POST /models/sum/invoke HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /models/sum/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n[1]1",
        b"POST /models/sum/invoke HTTP/1.1\r\nHost: x\r\n Folded: header\r\nContent-Length: 3\r\n\r\n[1]",
        b"GET /ping HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /pi\x00ng HTTP/1.1\r\n\r\n",
    ]
    for data in cases:
        answer = raw(port, data)
        assert status_of(answer) == 400, (data, answer[:200])
        assert_short_json_error(400, body_of(answer))
    assert server.invoke("sum", b"[1, 2]", "application/json")[0] == 200
    record("front: malformed HTTP", requests=len(cases) + 1, answers_lost=0)


def test_concurrent_large_bodies_are_answered_200_or_503_and_ping_stays_healthy(tmp_path):
    root = tmp_path / "models"
    write_script_model(root / "sum", SUM_MODEL)
    server = start_server(root, tmp_path)
    statuses: dict[int, int] = {}
    unhealthy: list[tuple[int, bytes]] = []
    stop = threading.Event()
    try:
        assert server.load("sum", str(root / "sum"))[0] == 200

        def ping_loop() -> None:
            while not stop.is_set():
                status, _, body = server.request("GET", "/ping", timeout=10)
                if status != 200 or b"Unhealthy" in body:
                    unhealthy.append((status, body))
                time.sleep(0.2)

        pinger = threading.Thread(target=ping_loop, daemon=True)
        pinger.start()
        sent = 0
        for clients in (64, 256):

            def one(_: int) -> int:
                return server.invoke("sum", LARGE_BODY, "application/x-npy")[0]

            with ThreadPoolExecutor(clients) as pool:
                for status in pool.map(one, range(clients)):
                    statuses[status] = statuses.get(status, 0) + 1
            sent += clients
        stop.set()
        pinger.join(15)
        status, _, body = server.invoke("sum", LARGE_BODY, "application/x-npy")
        assert status == 200, body
        assert abs(json.loads(body)[0] - (len(LARGE_BODY) - 128) / 4) < 1e3
    finally:
        stop.set()
        stop_server(server)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.get(200, 0) >= 64, statuses
    assert not unhealthy, unhealthy[:3]
    record(
        "front: 64 then 256 concurrent 6 MiB bodies",
        requests=sent + 1,
        answered_200=statuses.get(200, 0),
        answered_503=statuses.get(503, 0),
        answers_lost=0,
    )


def test_slow_clients_hold_little_memory_and_are_closed_by_the_timeouts(tmp_path):
    root = tmp_path / "models"
    write_script_model(root / "sum", SUM_MODEL)
    env = {"TORCH_MME_BODY_TIMEOUT_S": "3", "TORCH_MME_HEADER_TIMEOUT_S": "3", "TORCH_MME_QUEUE_TIMEOUT_S": "3"}
    server = start_server(root, tmp_path, env=env)
    stalled: list[socket.socket] = []
    try:
        assert server.load("sum", str(root / "sum"))[0] == 200
        front = psutil.Process(server.process.pid)
        before = front.memory_info().rss
        head = (
            f"POST /models/sum/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(LARGE_BODY)}\r\n\r\n"
        ).encode()
        # The front is stopped while every client sends its head and the start of its body, so each
        # connection's first read finds both: what a slow (or busy) server meets, made certain.
        offsets: list[int] = []
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            for _ in range(500):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
                sock.sendall(head)
                sock.setblocking(False)
                try:
                    offsets.append(sock.send(LARGE_BODY[:262144]))
                except OSError:
                    offsets.append(0)
                stalled.append(sock)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        half_open = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        half_open.sendall(b"POST /models/sum/invoke HTTP/1.1\r\nHost: x\r\nContent-Ty")
        stalled.append(half_open)
        body = LARGE_BODY[: len(LARGE_BODY) - 4096]  # each stops 4 KiB short
        peak = before
        served_meanwhile = 0
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            for i, sock in enumerate(stalled[:500]):
                if offsets[i] < len(body):
                    with contextlib.suppress(OSError):  # the server is not reading it (yet): its buffers are full
                        offsets[i] += sock.send(body[offsets[i] : offsets[i] + 262144])
            peak = max(peak, front.memory_info().rss)
            if served_meanwhile < 3:
                status, _, _ = server.invoke("sum", b"[1, 2, 3]", "application/json")
                assert status == 200
                served_meanwhile += 1
        grown = (peak - before) / 2**20
        closed = 0
        deadline = time.monotonic() + 15
        for sock in stalled:
            sock.setblocking(True)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while sock.recv(65536):
                    pass
                closed += 1
            except (ConnectionResetError, BrokenPipeError):
                closed += 1
            except TimeoutError:
                pass
        assert server.invoke("sum", b"[1, 2, 3]", "application/json")[0] == 200
    finally:
        for sock in stalled:
            sock.close()
        stop_server(server)
    assert grown < 50, f"the front grew by {grown:.0f} MB"
    assert closed == len(stalled), f"{len(stalled) - closed} stalled connections are still open"
    assert served_meanwhile == 3
    record(
        "front: 500 connections stalled mid-body + 1 mid-head",
        requests=len(stalled) + served_meanwhile + 1,
        front_rss_growth_mb=round(grown, 1),
        closed_by_timeout=closed,
        answers_lost=0,
    )


def test_connections_beyond_the_cap_are_refused_and_the_rest_are_served(tmp_path):
    root = tmp_path / "models"
    write_script_model(root / "sum", SUM_MODEL)
    server = start_server(root, tmp_path, env={"TORCH_MME_MAX_CONNECTIONS": "20"})
    held: list[socket.socket] = []
    try:
        assert server.load("sum", str(root / "sum"))[0] == 200
        for _ in range(20):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        time.sleep(0.3)
        answer = raw(server.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(answer) == 503, answer[:200]
        assert b"Retry-After" in answer
        for sock in held:
            sock.close()
        held.clear()
        time.sleep(0.3)
        assert server.invoke("sum", b"[1, 2]", "application/json")[0] == 200
    finally:
        for sock in held:
            sock.close()
        stop_server(server)
    record("front: connection cap", requests=22, answers_lost=0)


def test_serve_exits_non_zero_within_5_s_when_mms_java_dies(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    server = start_server(root, tmp_path)
    try:
        java = next(
            p
            for p in psutil.Process(server.process.pid).children(recursive=True)
            if "com.amazonaws.ml.mms.ModelServer" in " ".join(p.cmdline())
        )
        os.kill(java.pid, signal.SIGKILL)
        killed = time.monotonic()
        status = server.process.wait(10)
        took = time.monotonic() - killed
    finally:
        stop_server(server)
    assert status not in (0, None), status
    assert took < 5.0, f"serve took {took:.1f} s to notice"
    log = (tmp_path / "serve.log").read_text()
    assert "MMS's Java exited unexpectedly" in log
    record("front: Java killed", requests=0, faults_injected=1, serve_exit_s=round(took, 2), answers_lost=0)
