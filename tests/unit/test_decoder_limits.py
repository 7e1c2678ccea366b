"""The decoders' allocation bounds: sizes declared by a body are checked before anything is allocated.

Real bombs (tests/bombs.py): an ``.npz`` of 1 MiB that decompresses to 1 GiB,
headers declaring terabytes, JSON nested 50,000 deep. Peak memory is measured
in a fresh process, so that the test's own allocations do not hide it.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from handler import codecs
from tests import bombs
from torch_mme.errors import BadRequest, PayloadTooLarge

ROOT = Path(__file__).resolve().parents[2]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


MEASURE = """
import json, resource, sys, time
from handler import codecs
from torch_mme.errors import ServingError
body = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    decoded = codecs.decode(body, sys.argv[2])
    outcome = {"status": 200}
except ServingError as exc:
    outcome = {"status": exc.status, "message": str(exc)}
outcome["seconds"] = time.monotonic() - started
outcome["peak_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(outcome))
"""


def decode_measured(tmp_path, body: bytes, content_type: str, **env: str) -> dict:
    """Decode ``body`` in a fresh process (default settings unless ``env``): its outcome, time and peak RSS growth."""
    path = tmp_path / "body"
    path.write_bytes(body)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), content_type],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_an_npz_that_decompresses_to_a_gibibyte_is_refused_before_decompressing(tmp_path):
    bomb = bombs.npz_bomb(bombs.GiB)
    assert len(bomb) < 2 * 2**20  # about 1 MiB on the wire: within the default 6 MiB payload limit

    outcome = decode_measured(tmp_path, bomb, "application/x-npz")

    assert outcome["status"] == PayloadTooLarge.status == 413, outcome
    assert "1,073,741,952 bytes" in outcome["message"] and "TORCH_MME_MAX_DECODED_RATIO" in outcome["message"]
    assert outcome["peak_growth_mb"] < 100, outcome
    assert outcome["seconds"] < 2, outcome


def test_an_npz_member_whose_header_declares_a_gibibyte_is_refused():
    # the zip directory declares a small member; the .npy header inside it declares 1 GiB of float32
    with pytest.raises(PayloadTooLarge, match="member 'x'"):
        codecs.decode(bombs.npz_declaring((2**28,)), "application/x-npz")


def test_npz_members_together_over_the_limit_are_refused():
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.zeros(300, dtype=np.float32), b=np.zeros(300, dtype=np.float32))
    assert codecs.decode(buffer.getvalue(), "application/x-npz", limit=2400 + 512)  # the members, headers included
    with pytest.raises(PayloadTooLarge):
        codecs.decode(buffer.getvalue(), "application/x-npz", limit=2000)  # each fits, the two do not


def test_an_npz_member_that_is_not_an_array_is_bad_request():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "not an array")
    with pytest.raises(BadRequest, match="not a valid .npz"):  # was an AttributeError: 500
        codecs.decode(buffer.getvalue(), "application/x-npz")


def test_an_npy_header_declaring_a_terabyte_is_refused_without_allocating(tmp_path):
    outcome = decode_measured(tmp_path, bombs.npy_declaring((2**38,)), "application/x-npy")

    assert outcome["status"] == 413, outcome
    assert outcome["peak_growth_mb"] < 100, outcome


def test_the_limit_follows_the_payload_limit_and_the_ratio(monkeypatch):
    body = npy(np.zeros(2**20 // 4 + 1, dtype=np.float32))  # just over 1 MiB of data
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
    monkeypatch.setenv("TORCH_MME_MAX_DECODED_RATIO", "1")
    with pytest.raises(PayloadTooLarge):
        codecs.decode(body, "application/x-npy")
    monkeypatch.setenv("TORCH_MME_MAX_DECODED_RATIO", "2")
    assert codecs.decode(body, "application/x-npy").shape == (2**20 // 4 + 1,)


def test_json_nested_50000_deep_is_bad_request_not_a_recursion_error():
    body = b"[" * 50_000 + b"1" + b"]" * 50_000
    with pytest.raises(BadRequest, match="nested 50000 deep"):
        codecs.decode(body, "application/json")


def test_json_nested_within_the_limit_decodes():
    depth = codecs.MAX_JSON_DEPTH
    array = codecs.decode(b"[" * depth + b"1" + b"]" * depth, "application/json")
    assert array.shape == (1,) * depth


def test_json_with_brackets_hidden_in_strings_is_still_bad_request():
    # the pre-count sees a flat body; json.loads meets the real nesting
    body = b'["' + b"]" * 50_000 + b'",' + b"[" * 50_000 + b"]" * 50_000 + b"]"
    with pytest.raises(BadRequest):
        codecs.decode(body, "application/json")


def test_json_and_csv_element_counts_are_checked_before_parsing():
    with pytest.raises(PayloadTooLarge, match="JSON array"):
        codecs.decode(b"[" + b"1," * 999 + b"1]", "application/json", limit=3999)
    assert codecs.decode(b"[" + b"1," * 999 + b"1]", "application/json", limit=4000).shape == (1000,)
    table = b"1,2,3,4\n" * 250
    with pytest.raises(PayloadTooLarge, match="CSV table"):
        codecs.decode(table, "text/csv", limit=3999)
    assert codecs.decode(table, "text/csv", limit=4000).shape == (250, 4)


@pytest.mark.parametrize("body", [b"1,2\r\n3,4\r\n", b"1,2\r3,4", b"1,2\n \n3,4\n", b"1,2\x0b3,4"])
def test_csv_line_breaks_are_those_of_splitlines(body):
    np.testing.assert_array_equal(codecs.decode(body, "text/csv"), [[1, 2], [3, 4]])


def test_empty_csv_is_an_empty_array():
    assert codecs.decode(b"\n\n", "text/csv").shape == (0,)
