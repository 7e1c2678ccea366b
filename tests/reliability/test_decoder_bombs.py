"""Decompression bombs and deep nesting against a running server: refused from declared sizes, the worker intact.

A 1 MiB ``.npz`` whose member decompresses to 1 GiB (well inside the 6 MiB
payload limit) used to be decoded: the model process held the whole GiB. The
decoders now read the zip directory and the ``.npy`` header first and answer
413. The model process's peak resident memory (``VmHWM``) is compared before
and after each attack; its workers must not restart.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import bombs
from tests.reliability.conftest import (
    assert_short_json_error,
    record,
    start_server,
    stop_server,
    worker_identity,
    write_torchscript,
)
from torch_mme.runtime import processes

MAX_GROWTH_MB = 100


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    logs = tmp_path_factory.mktemp("logs")
    write_torchscript(root / "linear" / "model", seed=1)
    server = start_server(root, logs, args=["--timeout", "20"])
    try:
        assert server.load("linear", str(root / "linear" / "model"))[0] == 200
        yield {"server": server}
    finally:
        stop_server(server)


def peak_rss_mb(server, name: str) -> float:
    """The highest peak resident memory (VmHWM) among the model's processes, in MiB."""
    peaks = []
    for process in processes.model_processes(server.process.pid, name):
        with open(f"/proc/{process.pid}/status") as f:
            peaks += [int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")]
    assert peaks, "no model process found"
    return max(peaks)


@pytest.mark.parametrize(
    ("attack", "content_type", "status"),
    [
        ("npz-1GiB", "application/x-npz", 413),
        ("npy-header-1TiB", "application/x-npy", 413),
        ("npz-header-1GiB", "application/x-npz", 413),
        ("json-50000-deep", "application/json", 400),
    ],
)
def test_decoder_bombs_are_refused_without_the_memory(world, attack, content_type, status):
    server = world["server"]
    body = {
        "npz-1GiB": lambda: bombs.npz_bomb(bombs.GiB),
        "npy-header-1TiB": lambda: bombs.npy_declaring((2**38,)),
        "npz-header-1GiB": lambda: bombs.npz_declaring((2**28,)),
        "json-50000-deep": lambda: b"[" * 50_000 + b"1" + b"]" * 50_000,
    }[attack]()
    assert len(body) < 2 * 2**20  # inside the default 6 MiB payload limit
    before_identity = worker_identity(server, "linear")
    before = peak_rss_mb(server, "linear")

    got, _, answer = server.invoke("linear", body, content_type)

    growth = peak_rss_mb(server, "linear") - before
    record(f"decoder bomb {attack}", requests=1, status=got, peak_rss_growth_mb=round(growth, 1))
    assert got == status, answer[:300]
    assert_short_json_error(got, answer)
    assert growth < MAX_GROWTH_MB, f"the model process's peak RSS grew by {growth:.0f} MiB"
    assert worker_identity(server, "linear") == before_identity
    ok, _, result = server.invoke("linear", json.dumps([[1.0, 2.0, 3.0]]).encode(), "application/json")
    assert ok == 200 and np.asarray(json.loads(result)).shape == (1, 2)
