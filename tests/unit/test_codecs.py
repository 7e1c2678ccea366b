"""Codecs: bodies to arrays and results to bodies, without a model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from handler import codecs
from torch_mme.errors import BadRequest, NotAcceptable, UnsupportedAccept, UnsupportedContentType


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
def test_negotiate_nothing_supported_is_unsupported_as_in_the_toolkit(accept):
    with pytest.raises(UnsupportedAccept):
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
    assert codecs.encode(np.array([1.0, 2.0]), "text/csv")[0] == b"1.0\n2.0\n"  # one value per line (savetxt)


def test_encode_csv_refuses_three_dimensions_and_dicts():
    with pytest.raises(NotAcceptable):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")
    with pytest.raises(NotAcceptable):
        codecs.encode({"a": np.zeros(2)}, "text/csv")


def test_encode_npy_of_strings_needs_no_pickle_and_objects_are_refused():
    body, _ = codecs.encode(np.array(["a", "bc"]), "application/x-npy")
    assert np.load(io.BytesIO(body), allow_pickle=False).tolist() == ["a", "bc"]
    with pytest.raises(NotAcceptable):
        codecs.encode(np.array([{"a": 1}], dtype=object), "application/x-npy")


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
