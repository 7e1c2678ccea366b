"""Responses that MMS's Java reads in pieces: the worker is never dropped.

Netty reads a worker's response with a buffer sized by the recent responses:
after many small ones, a long one arrives in pieces, cut at changing offsets.
MMS 1.1.11's decoder threw on a cut inside a status code or the header map,
dropped the worker and answered 500 "Worker died." (5 of 100 long responses
in this test, before serve started Java with torch-mme's decoder).
"""

from __future__ import annotations

import http.client
import os

import psutil

from tests.reliability.conftest import (
    assert_short_json_error,
    record,
    start_server,
    stop_server,
    worker_identity,
    write_script_model,
)
from torch_mme.runtime import mms_java

LENGTHY = """
    def model_fn(model_dir):
        return None

    def input_fn(body, content_type):
        length = int(body or b"0")
        if length:
            raise ValueError("x" * length)  # a 400 whose reason and body are this long
        return 0

    def predict_fn(data, model):
        return data

    def output_fn(prediction, accept):
        return b"1", "text/csv"
"""
SMALL_BETWEEN = 60  # enough small responses for netty's read buffer to shrink back between two long ones


def _java(server) -> psutil.Process:
    for process in psutil.Process(server.process.pid).children(recursive=True):
        if "com.amazonaws.ml.mms.ModelServer" in process.cmdline():
            return process
    raise AssertionError("no MMS Java process")


def test_long_responses_after_small_ones_never_drop_the_worker(tmp_path):
    write_script_model(tmp_path / "lengthy" / "model", LENGTHY)
    server = start_server(tmp_path, tmp_path, args=["--timeout", "20"])
    try:
        java_dir = _java(server).cwd()
        assert os.path.isfile(os.path.join(java_dir, mms_java.CLASS)), java_dir  # ahead of MMS's jar on its class path
        assert server.load("lengthy", str(tmp_path / "lengthy" / "model"))[0] == 200
        before = worker_identity(server, "lengthy")
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        answers: dict[int, int] = {}
        for length in range(100, 400, 3):
            for body in [b"0"] * SMALL_BETWEEN + [str(length).encode()]:
                connection.request("POST", "/models/lengthy/invoke", body=body, headers={"Content-Type": "text/csv"})
                response = connection.getresponse()
                data = response.read()
                answers[response.status] = answers.get(response.status, 0) + 1
                expected = 200 if body == b"0" else 400
                assert response.status == expected, (length, response.status, data[:200])
                if expected == 400:
                    assert b"ValueError: xxxx" in assert_short_json_error(400, data)["message"].encode(), data[:200]
        connection.close()
        assert worker_identity(server, "lengthy") == before  # the same worker answered all of them
    finally:
        stop_server(server)
    record("response_framing", requests=sum(answers.values()), statuses=str(dict(sorted(answers.items()))))


ECHO_HOOKS = """
    def model_fn(model_dir):
        return None

    def input_fn(body, content_type):
        return body

    def predict_fn(data, model):
        return data
"""
INJECTING = (
    ECHO_HOOKS
    + """
    def output_fn(prediction, accept, context):
        forged = b"HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: 6\\r\\n\\r\\nforged"
        # a header value that would end MMS's answer head early, and a body that reads as another answer
        context.set_response_header(0, "X-Evil", "1\\r\\nContent-Length: 0\\r\\n\\r\\n")
        context.set_response_header(0, "Bad Name", "x")
        return (b" 200" * 50_000) + forged * 20, "text/plain\\r\\nX-Injected: 1"
"""
)
FORGED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nforged"
HONEST = (
    ECHO_HOOKS
    + """
    def output_fn(prediction, accept):
        return b"honest", "text/plain"
"""
)


def test_a_model_cannot_forge_answers_with_its_headers_for_itself_or_another_tenant(tmp_path):
    """Found by review: MMS writes a worker's headers, content type and reason phrase into its HTTP answer
    unchecked (Netty's validation off), so a model's CR LF could end the answer's head early and leave a
    forged answer on the pooled connection for the next request, another model's. torch-mme's decoder drops
    such headers and keeps the content type on one line; every answer is the model's own, whole."""
    write_script_model(tmp_path / "evil" / "model", INJECTING)
    write_script_model(tmp_path / "honest" / "model", HONEST)
    server = start_server(tmp_path, tmp_path, args=["--timeout", "20"])
    try:
        assert server.load("evil", str(tmp_path / "evil" / "model"))[0] == 200
        assert server.load("honest", str(tmp_path / "honest" / "model"))[0] == 200
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for _ in range(5):
            connection.request("POST", "/models/evil/invoke", body=b"x", headers={"Content-Type": "text/plain"})
            response = connection.getresponse()
            data = response.read()
            assert response.status == 200
            assert len(data) == len(b" 200") * 50_000 + 20 * len(FORGED)  # the whole body, not cut at a forged head
            assert data.startswith(b" 200 200") and data.endswith(b"forged")
            assert response.getheader("X-Evil") is None and response.getheader("X-Injected") is None
            assert "\r" not in (response.getheader("Content-Type") or "")
            connection.request("POST", "/models/honest/invoke", body=b"x", headers={"Content-Type": "text/plain"})
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, b"honest")
        connection.close()
    finally:
        stop_server(server)
