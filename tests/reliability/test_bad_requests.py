"""Generated bad requests against loaded models of every input type: 4xx (or a correct 2xx), never a crash.

Hypothesis generates the requests (bodies, Content-Type, Accept, extra headers,
sizes); a pool of keep-alive clients sends them, each with a time bound. Each
answer must be what the same handler gives the same request in-process (status,
content type and body, so a 200 is the correct one and a 4xx the right error)
and a short JSON error never carrying a traceback. The workers must not restart
(same worker ids, start times and pids before and after) and every model must
still answer correctly afterwards.
"""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mms.context import Context, RequestProcessor

from handler.service import PyTorchHandler
from tests.reliability.conftest import (
    Client,
    assert_short_json_error,
    record,
    start_server,
    stop_server,
    worker_identity,
    write_script_model,
    write_torchscript,
)
from torch_mme.settings import Settings

REQUESTS = 10_000
THREADS = 6
REQUEST_BOUND_S = 10.0
MAX_REQUEST_MB = 1

CODE_MODEL = """
    import io
    import os

    import numpy as np
    import torch

    CALLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "calls")

    def model_fn(model_dir):
        return torch.nn.Identity()

    def input_fn(body, content_type):
        with open(CALLS, "a") as f:
            f.write("x")
        if content_type != "application/x-npy":
            raise ValueError(f"this model takes application/x-npy, not {content_type}")
        return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))

    def output_fn(prediction, accept):
        return {"sum": float(prediction.double().sum())}, "application/json"
"""


class Pair(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


CONTENT_TYPES = [
    "application/json",
    "text/csv",
    "application/x-npy",
    "application/x-npz",
    "application/json; charset=utf-8",
    "text/csv;charset=latin-1",
    "application/octet-stream",
    "image/png",
    "text/plain",
    "",
    "*/*",
    "application/",
    ";;;",
    "application/json; q=0",
]
ACCEPTS = [
    "application/json",
    "text/csv",
    "application/x-npy",
    "application/x-npz",
    "*/*",
    "image/png",
    "text/csv;q=0.5, application/x-npy",
    "application/json;q=0, text/csv;q=0",
    "application/json;q=abc",
    ",,,",
    "",
]
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz(arrays: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


numbers = st.one_of(st.floats(width=32), st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.text(max_size=5))
json_values = st.recursive(numbers, lambda inner: st.lists(inner, max_size=6), max_leaves=40)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)
dtypes = st.sampled_from(["float32", "float64", "int64", "int8", "uint16", "bool", "complex64", "<U3", "float16"])


@st.composite
def arrays(draw) -> np.ndarray:
    shape = tuple(draw(shapes))
    dtype = draw(dtypes)
    size = int(np.prod(shape)) if shape else 1
    raw = draw(st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")), min_size=size, max_size=size))
    with np.errstate(all="ignore"):  # overflowing casts (1e6 to int8) are part of the fuzz
        return np.array(raw, dtype=np.float64).reshape(shape).astype(dtype)


bodies = st.one_of(
    st.binary(max_size=512),
    st.binary(min_size=4096, max_size=65536).map(lambda b: b * 2),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(st.lists(st.floats(width=32).map(str) | header_text, max_size=5), max_size=6).map(
        lambda rows: "\n".join(",".join(r) for r in rows).encode()
    ),
    arrays().map(_npy),
    st.tuples(arrays().map(_npy), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),  # truncated .npy
    st.lists(arrays(), max_size=3).map(_npz),
    st.integers(1, 300).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
)


@st.composite
def bad_requests(draw) -> tuple[str, dict[str, str], bytes]:
    model = draw(st.sampled_from(["linear", "pair", "code"]))
    headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES) | header_text)}
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(ACCEPTS) | header_text)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(["X-Amzn-SageMaker-Custom-Attributes", "X-Junk", "Content-Encoding", "Expect"]))
        headers[name] = draw(header_text)
    if headers.get("Expect") and headers["Expect"].lower() != "100-continue":
        headers.pop("Expect")  # an unknown expectation is 417 by the HTTP rules; covered below
    return model, headers, draw(bodies)


def generate(count: int) -> list[tuple[str, dict[str, str], bytes]]:
    generated: list[tuple[str, dict[str, str], bytes]] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_requests())
    def collect(request):
        generated.append(request)

    collect()
    return generated


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    logs = tmp_path_factory.mktemp("logs")
    linear = write_torchscript(root / "linear" / "model", seed=1)
    (root / "pair" / "model").mkdir(parents=True)
    torch.jit.script(Pair()).save(str(root / "pair" / "model" / "model.pt"))
    write_script_model(root / "code" / "model", CODE_MODEL)
    server = start_server(root, logs, args=["--timeout", "5", "--max-request-mb", str(MAX_REQUEST_MB)])
    try:
        for name in ("linear", "pair", "code"):
            assert server.load(name, str(root / name / "model"))[0] == 200
        yield {"server": server, "root": root, "linear": linear, "logs": logs}
    finally:
        stop_server(server)


class InProcess:
    """The handler of each model in this process: the expected answer to any request."""

    def __init__(self, root) -> None:
        self.root = root
        self.handlers: dict[str, PyTorchHandler] = {}
        for name in ("linear", "pair", "code"):
            handler = PyTorchHandler(Settings(models_root=str(root)))
            handler.initialize(self._context(name, {}))
            self.handlers[name] = handler

    def _context(self, name: str, headers: dict[str, str]) -> Context:
        context = Context(name, str(self.root / name / "model"), None, 1, None, "1.1.11")
        context.request_processor = [RequestProcessor(headers)]
        return context

    def answer(self, model: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        received = {name: value.strip(" \t") for name, value in headers.items()}  # HTTP drops the spaces around
        context = self._context(model, received)
        with warnings.catch_warnings():  # e.g. torch casting a fuzzed complex array: the model's business
            warnings.simplefilter("ignore")
            [data] = self.handlers[model].handle([{"body": body}], context)
        status, _ = context.get_response_status(0)
        return status or 200, context.get_response_content_type(0) or "", bytes(data)


def answers_correctly(server, linear) -> None:
    rows = [[1.0, 2.0, 3.0], [-4.0, 0.5, 9.0]]
    expected = linear(torch.tensor(rows)).detach().numpy()
    status, _, body = server.invoke("linear", json.dumps(rows).encode(), "application/json")
    assert status == 200, body
    np.testing.assert_allclose(json.loads(body), expected, rtol=1e-5)
    status, _, body = server.invoke("linear", b"1,2,3\n-4,0.5,9", "text/csv", "text/csv")
    assert status == 200, body
    got = np.array([[float(x) for x in line.split(",")] for line in body.decode().strip().splitlines()])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 3), np.float32)
    status, _, body = server.invoke("pair", _npz([a, b]), "application/x-npz", "application/x-npy")
    assert status == 200, body
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), a + b)
    status, _, body = server.invoke("code", _npy(np.arange(4, dtype=np.int64)), "application/x-npy")
    assert status == 200 and json.loads(body) == {"sum": 6.0}, body


def test_generated_bad_requests_get_short_4xx_and_no_worker_restarts(world):
    server = world["server"]
    answers_correctly(server, world["linear"])
    before = {name: worker_identity(server, name) for name in ("linear", "pair", "code")}
    started = time.monotonic()
    requests = generate(REQUESTS)
    generated_s = time.monotonic() - started
    in_process = InProcess(world["root"])
    expected = [in_process.answer(*request) for request in requests]
    local = threading.local()
    clients: list[Client] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    slowest = 0.0
    lock = threading.Lock()

    def send(index: int) -> None:
        nonlocal slowest
        model, headers, body = requests[index]
        if not hasattr(local, "client"):
            local.client = Client(server.port, timeout=REQUEST_BOUND_S)
            clients.append(local.client)
        t0 = time.monotonic()
        try:
            status, response_headers, data = local.client.request("POST", f"/models/{model}/invoke", body, headers)
            elapsed = time.monotonic() - t0
            assert elapsed < REQUEST_BOUND_S, elapsed
            assert status == 200 or status in (400, 406, 413, 415), (status, data[:300])
            if status >= 400:
                assert_short_json_error(status, data)
            want_status, want_type, want_body = expected[index]
            assert (status, response_headers.get("content-type", "")) == (want_status, want_type), data[:300]
            assert data == want_body, (data[:300], want_body[:300])
        except Exception as exc:  # noqa: BLE001 - collected, reported below with the request
            with lock:
                failures.append(f"{model} {headers} {body[:120]!r}: {type(exc).__name__}: {exc}"[:800])
            return
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            slowest = max(slowest, elapsed)

    sent_at = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, range(len(requests))))
    send_s = time.monotonic() - sent_at
    assert not failures, f"{len(failures)} of {len(requests)} failed, e.g.:\n" + "\n".join(failures[:10])
    assert sum(client.resent for client in clients) == 0  # no connection dropped under a request
    after = {name: worker_identity(server, name) for name in ("linear", "pair", "code")}
    assert after == before  # no worker restarted, no model process replaced
    answers_correctly(server, world["linear"])
    record(
        "bad_requests",
        requests=len(requests),
        statuses=json.dumps(dict(sorted(statuses.items()))),
        generate_s=round(generated_s, 1),
        send_s=round(send_s, 1),
        requests_per_s=round(len(requests) / send_s),
        slowest_request_s=round(slowest, 3),
        worker_restarts=0,
    )


def test_oversized_bodies_get_413_before_reaching_a_worker(world):
    server, calls = world["server"], world["root"] / "calls"
    before_calls = calls.read_text() if calls.exists() else ""
    before = worker_identity(server, "code")
    big = b"0" * (MAX_REQUEST_MB * 2**20 + 1)
    client = Client(server.port, timeout=REQUEST_BOUND_S)
    tried = 0
    for headers, body in [
        ({"Content-Type": "application/x-npy"}, big),
        ({"Content-Type": "application/json"}, b"[" + b"1," * (MAX_REQUEST_MB * 2**20) + b"1]"),
        ({"Content-Type": "application/x-npy"}, iter([big[:700_000], big[700_000:]])),
    ]:
        t0 = time.monotonic()
        status, _, data = client.request("POST", "/models/code/invoke", body, headers)
        tried += 1
        assert status == 413 and time.monotonic() - t0 < REQUEST_BOUND_S, (status, data[:200])
        assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in assert_short_json_error(413, data)["message"]
        client.close()
    assert (calls.read_text() if calls.exists() else "") == before_calls  # input_fn never ran
    assert worker_identity(server, "code") == before
    answers_correctly(server, world["linear"])
    record("oversized_bodies", requests=tried)
