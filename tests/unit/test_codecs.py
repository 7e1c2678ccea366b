"""Codecs: bodies to arrays and results to bodies, without a model."""

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
import torch

from handler import codecs
from handler.errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedContentType
from tests import bombs

ROOT = Path(__file__).resolve().parents[2]


def npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("header", "kind"),
    [("Application/JSON; charset=utf-8", "application/json"), ("text/csv", "text/csv"), (None, ""), ("", "")],
)
def test_media_type(header, kind):
    assert codecs.media_type(header) == kind


def test_decode_json_nested_list_is_float32():
    array = codecs.decode(b"[[1, 2, 3], [4, 5, 6]]", "application/json")
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


def test_decode_without_content_type_reads_json():
    np.testing.assert_array_equal(codecs.decode(b"[1, 2]", None), [1, 2])


@pytest.mark.parametrize("body", [b"[[1, 2", b"\xff\xfe", b"not json"])
def test_decode_malformed_json_is_bad_request(body):
    with pytest.raises(BadRequest, match="not valid JSON"):
        codecs.decode(body, "application/json")


@pytest.mark.parametrize(
    "body", [b"[[1, 2, 3], [4]]", b'[["a", "b"]]', b'{"inputs": [1]}', b'"text"', b"true", b"null"]
)
def test_decode_json_that_is_no_numeric_array_is_bad_request(body):
    with pytest.raises(BadRequest):
        codecs.decode(body, "application/json")


def test_decode_csv_rows_per_line():
    array = codecs.decode(b"1,2,3\n4,5,6\n\n", "text/csv")
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("body", [b"1,2,3\n4,5\n", b"1,x,3\n", b"\xff,1\n"])
def test_decode_bad_csv_is_bad_request(body):
    with pytest.raises(BadRequest):
        codecs.decode(body, "text/csv")


def test_decode_npy_keeps_dtype_and_shape():
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    decoded = codecs.decode(npy(array), "application/x-npy")
    assert decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, array)


def test_decode_pickled_object_npy_is_refused():
    body = npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequest):
        codecs.decode(body, "application/x-npy")


@pytest.mark.parametrize("body", [b"", b"garbage", npy(np.array(["a", "b"]))])
def test_decode_bad_npy_is_bad_request(body):
    with pytest.raises(BadRequest):
        codecs.decode(body, "application/x-npy")


def test_decode_npz_gives_named_arrays():
    buffer = io.BytesIO()
    np.savez(buffer, a=np.ones(2, dtype=np.float32), b=np.zeros((1, 3)))
    decoded = codecs.decode(buffer.getvalue(), "application/x-npz")
    assert list(decoded) == ["a", "b"]
    np.testing.assert_array_equal(decoded["b"], np.zeros((1, 3)))


def test_decode_empty_npz_is_bad_request():
    buffer = io.BytesIO()
    np.savez(buffer)
    with pytest.raises(BadRequest):
        codecs.decode(buffer.getvalue(), "application/x-npz")


def test_decode_npz_with_object_array_is_bad_request():
    buffer = io.BytesIO()
    np.savez(buffer, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(BadRequest):
        codecs.decode(buffer.getvalue(), "application/x-npz")


def test_decode_unsupported_content_type():
    with pytest.raises(UnsupportedContentType, match="image/png"):
        codecs.decode(b"\x89PNG", "image/png")


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("TEXT/CSV", "text/csv"),
        ("text/csv;q=0.5, application/x-npy", "application/x-npy"),
        ("application/x-npy;q=0.1, text/csv;q=0.9", "text/csv"),
        ("image/png, text/csv", "text/csv"),
        ("image/png, */*;q=0.1", "application/json"),
        ("application/*", "application/json"),
        ("text/csv;q=0, application/x-npz", "application/x-npz"),
        ("text/csv;q=abc, application/x-npy;q=0.2", "application/x-npy"),
    ],
)
def test_negotiate(accept, kind):
    assert codecs.negotiate(accept) == kind


def test_negotiate_any_gives_the_default():
    assert codecs.negotiate("*/*", default="text/csv") == "text/csv"


@pytest.mark.parametrize("accept", ["image/png", "text/csv;q=0", "text/html, application/xml"])
def test_negotiate_nothing_supported_is_not_acceptable(accept):
    with pytest.raises(NotAcceptable):
        codecs.negotiate(accept)


def test_encode_json_of_a_tensor():
    body, kind = codecs.encode(torch.tensor([[1.5, 2.0]]), "application/json")
    assert kind == "application/json"
    assert json.loads(body) == [[1.5, 2.0]]


def test_encode_csv_round_trips_floats_exactly():
    value = np.array([[0.1, 1 / 3], [2.5, -7.0]], dtype=np.float32)
    body, kind = codecs.encode(value, "text/csv")
    assert kind == "text/csv"
    parsed = np.array([[float(c) for c in line.split(",")] for line in body.decode().splitlines()], dtype=np.float32)
    np.testing.assert_array_equal(parsed, value)


def test_encode_csv_of_a_scalar_and_a_vector():
    assert codecs.encode(np.float32(2.0), "text/csv")[0] == b"2.0\n"
    assert codecs.encode(np.array([1.0, 2.0]), "text/csv")[0] == b"1.0,2.0\n"


def test_encode_csv_refuses_three_dimensions_and_dicts():
    with pytest.raises(NotAcceptable):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")
    with pytest.raises(NotAcceptable):
        codecs.encode({"a": np.zeros(2)}, "text/csv")


def test_encode_npy_refuses_strings():
    with pytest.raises(NotAcceptable):
        codecs.encode(np.array(["a"]), "application/x-npy")


def test_encode_npz_of_a_dict_keeps_names():
    body, kind = codecs.encode({"logits": torch.ones(2), "ids": torch.tensor([1, 2])}, "application/x-npz")
    assert kind == "application/x-npz"
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["ids", "logits"]
        np.testing.assert_array_equal(archive["ids"], [1, 2])


def test_encode_npz_of_one_array_is_named_output():
    body, _ = codecs.encode(np.arange(3), "application/x-npz")
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        assert archive.files == ["output"]


def test_to_numpy_of_bfloat16_and_nested_values():
    value = codecs.to_numpy({"a": torch.ones(2, dtype=torch.bfloat16), "b": (torch.zeros(1), 3)})
    assert value["a"].dtype == np.float32
    assert isinstance(value["b"], tuple)
    assert isinstance(value["b"][0], np.ndarray)
    assert value["b"][1] == 3


def test_to_numpy_of_a_tensor_that_requires_grad():
    value = codecs.to_numpy(torch.ones(2, requires_grad=True) * 2)
    np.testing.assert_array_equal(value, [2, 2])


# ---------------------------------------------------------------- allocation bounds of the decoders

MEASURE = """
import json, resource, sys, time
from handler import codecs
from handler.errors import HandlerError
body = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
try:
    decoded = codecs.decode(body, sys.argv[2])
    outcome = {"status": 200}
except HandlerError as exc:
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
