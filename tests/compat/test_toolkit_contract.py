"""The SageMaker PyTorch toolkit's contract, each check in-process and through ``serve`` (the ``via`` fixture).

The toolkit's behaviour is taken from its source: sagemaker-inference 1.10's ``transformer.py``
(``Transformer.transform``, ``validate_and_initialize``, ``_run_handler_function``), ``decoder.py``,
``encoder.py``, ``content_types.py``, and aws/sagemaker-pytorch-inference-toolkit's
``default_pytorch_inference_handler.py``; where the toolkit can run here, its answer is computed by it
(the ``toolkit`` fixture) and ours must be the same bytes.
"""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pytest
import torch

from tests.compat import zoo
from tests.compat.conftest import CSV, CUSTOM_ATTRIBUTES, JSON, NPY, TARGET_MODEL

X = [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]]


def reference(name: str, x: list) -> torch.Tensor:
    module = zoo.Vector().eval() if name == "default_vector" else zoo.linear()
    with torch.no_grad():
        return module(torch.tensor(x, dtype=torch.float32))


# --- 1. JSON and CSV bodies reach the hooks as str ------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "expected_type"),
    [(JSON, b'{"a": [1, 2]}', "str"), (CSV, b"1,2\n3,4", "str"), (NPY, b"\x93NUMPY", "bytearray")],
)
def test_input_fn_gets_str_for_utf8_types(via, toolkit, content_type, body, expected_type):
    answer = via.invoke("types", body, content_type)
    assert answer.status == 200, answer.body
    seen = json.loads(answer.body)
    assert seen["type"] == expected_type  # content_types.UTF8_TYPES are decoded before input_fn
    assert seen == json.loads(toolkit.invoke("types", body, content_type).body)
    if content_type == CSV:
        assert seen["rows"] == [["1", "2"], ["3", "4"]]  # io.StringIO(request_body) works


def test_transform_fn_gets_str_for_utf8_types(via, toolkit):
    for content_type, expected in ((JSON, "str"), (CSV, "str"), ("application/octet-stream", "bytearray")):
        answer = via.invoke("transform_types", b"1,2", content_type, JSON)
        assert json.loads(answer.body)["type"] == expected
        assert answer.body == toolkit.invoke("transform_types", b"1,2", content_type, JSON).body


def test_a_json_body_that_is_not_utf8_is_400(via, error_of):
    answer = via.invoke("types", b'{"a": "\xff"}', JSON)
    assert answer.status == 400  # the toolkit's decode("utf-8") raises: a 500 with a traceback there
    assert "UTF-8" in error_of(answer)["message"]


# --- 2. the default model_fn finds the one *.pt / *.pth of any name ------------------------------------


def test_traced_model_of_any_name_loads_and_answers_as_the_toolkit(via, toolkit):
    """The PyTorch toolkit's own multi-model test: ``traced_resnet18/traced_resnet18.pt`` + ``transform_fn``."""
    assert via.load("traced_resnet18")[0] == 200
    answer = via.invoke("traced_resnet18", zoo.png(), "application/octet-stream")
    assert answer.status == 200 and answer.content_type == JSON
    probabilities = json.loads(answer.body)
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-5
    assert answer.body == toolkit.invoke("traced_resnet18", zoo.png(), "application/octet-stream").body


def test_default_model_fn_loads_a_single_pt_of_any_name(via, toolkit):
    answer = via.invoke("default_vector", json.dumps(X).encode(), JSON, JSON)
    assert answer.status == 200
    np.testing.assert_allclose(json.loads(answer.body), reference("default_vector", X).numpy(), atol=1e-6)
    assert answer.body == toolkit.invoke("default_vector", json.dumps(X).encode(), JSON, JSON).body


def test_several_artifacts_and_no_model_pt_fail_the_load(via, toolkit):
    status, message = via.load("two_artifacts")
    assert status == 500
    assert "exactly one .pt or .pth" in message.lower() and "a.pt" in message and "b.pth" in message
    with pytest.raises(ValueError, match="Exactly one .pth or .pt file is required"):  # the toolkit's error
        toolkit.invoke("two_artifacts", b"[]", JSON)


# --- 3. SAGEMAKER_PROGRAM ----------------------------------------------------------------------------------


def test_sagemaker_program_selects_the_script(via, toolkit):
    """``PyTorchModel(entry_point="mnist_1d.py")`` sets SAGEMAKER_PROGRAM; the toolkit's mnist_1d.py, as it is."""
    images = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    answer = via.invoke("mnist_1d", json.dumps(images.tolist()).encode(), JSON, JSON)
    assert answer.status == 200, answer.body
    with torch.no_grad():
        expected = zoo.mnist_net()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(json.loads(answer.body), expected, atol=1e-5)
    assert answer.body == toolkit.invoke("mnist_1d", json.dumps(images.tolist()).encode(), JSON, JSON).body


# --- 4. hooks: signatures with and without context, pre_model_fn / model_warmup_fn, order, counts --------


@pytest.mark.parametrize("name", ["lifecycle_plain", "lifecycle_context"])
def test_hooks_order_and_counts(via, name):
    answers = [via.invoke(name, json.dumps(X).encode(), JSON, JSON, **{CUSTOM_ATTRIBUTES: f"n={i}"}) for i in range(3)]
    assert all(a.status == 200 for a in answers), [a.body for a in answers]
    last = json.loads(answers[-1].body)
    load_order = ["pre_model_fn", "model_fn", "model_warmup_fn"]
    assert last["calls"] == load_order + ["input_fn", "predict_fn", "output_fn"] * 3  # model_fn once per worker
    assert len({json.loads(a.body)["pid"] for a in answers}) == 1
    np.testing.assert_allclose(last["y"], reference("default_linear", X).numpy(), atol=1e-6)
    assert last["grad"] is True  # the user's predict_fn runs as it is: no inference_mode, no no_grad


def test_hooks_with_context_get_the_request_context(via):
    answer = via.invoke(
        "lifecycle_context",
        json.dumps(X).encode(),
        JSON,
        JSON,
        **{CUSTOM_ATTRIBUTES: "trace=abc-123", TARGET_MODEL: "team-a/lifecycle.tar.gz"},
    )
    seen = json.loads(answer.body)["context"]
    assert seen["model_dir"].endswith("lifecycle_context")
    assert seen["custom_attributes"] == "trace=abc-123"
    assert seen["mms_header"] == "trace=abc-123"  # MMS's own context.get_request_header(0, name) too
    assert seen["target_model"] == "team-a/lifecycle.tar.gz"
    assert answer.header(CUSTOM_ATTRIBUTES) == "answered=trace=abc-123"  # set on the response by output_fn


def test_the_toolkits_call_model_fn_once_model(via):
    """Its model_fn fails when called twice in one process (a lock file per pid)."""
    for _ in range(3):
        answer = via.invoke("call_model_fn_once", b"anything", "application/octet-stream")
        assert (answer.status, answer.body) == (200, b"output")


# --- 5. a user's predict_fn may use autograd --------------------------------------------------------------


def test_predict_fn_using_autograd_answers(via):
    answer = via.invoke("saliency", json.dumps(X).encode(), JSON, JSON)
    assert answer.status == 200, answer.body
    weight = zoo.linear().weight.detach()
    np.testing.assert_allclose(json.loads(answer.body), weight.sum(0).expand(2, 3).numpy(), atol=1e-6)


# --- 6. default encoders, as the toolkit's encoder.py ------------------------------------------------------


@pytest.mark.parametrize("name", ["default_linear", "default_vector"])
@pytest.mark.parametrize("accept", [JSON, CSV, None, "*/*", f"{CSV}, {JSON}"])
def test_default_encoding_is_the_toolkits(via, toolkit, name, accept):
    body = json.dumps(X).encode()
    ours, theirs = via.invoke(name, body, JSON, accept), toolkit.invoke(name, body, JSON, accept)
    assert (ours.status, ours.body) == (theirs.status, theirs.body)
    assert ours.content_type == (CSV if accept and accept.startswith(CSV) else JSON)


def test_json_and_csv_layout(via):
    body = json.dumps(X).encode()
    vector = reference("default_vector", X).tolist()
    assert via.invoke("default_vector", body, JSON, JSON).body == json.dumps(vector).encode()  # "[a, b]"
    assert via.invoke("default_vector", body, JSON, CSV).body == "".join(f"{v}\n" for v in vector).encode()
    assert b", " in via.invoke("default_linear", body, JSON, JSON).body


def test_npy_keeps_the_dtype_where_the_toolkit_widens_to_float64(via, toolkit):
    body = json.dumps(X).encode()
    ours = np.load(io.BytesIO(via.invoke("default_linear", body, JSON, NPY).body), allow_pickle=False)
    theirs = np.load(io.BytesIO(toolkit.invoke("default_linear", body, JSON, NPY).body), allow_pickle=False)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))  # the same numbers
    assert (ours.dtype, theirs.dtype) == (np.float32, np.float64)  # deliberate: the tensor's own dtype


@pytest.mark.parametrize("accept", [CSV, NPY, JSON])
def test_string_results_are_encoded_as_the_toolkit(via, toolkit, accept):
    ours, theirs = via.invoke("strings", b"[1]", JSON, accept), toolkit.invoke("strings", b"[1]", JSON, accept)
    assert (ours.status, ours.content_type) == (200, accept)
    assert ours.body == theirs.body  # "cat\ndog\n", a plain <U3 .npy, ["cat", "dog"]


# --- errors -------------------------------------------------------------------------------------------------


def test_unsupported_accept_is_415(via, toolkit, error_of):
    answer = via.invoke("default_linear", json.dumps(X).encode(), JSON, "image/png")
    assert answer.status == 415 and error_of(answer)["type"] == "UnsupportedAccept"
    # the toolkit raises the same UnsupportedFormatError it raises for an unknown Content-Type
    assert (
        "is not supported" in toolkit.invoke("default_linear", json.dumps(X).encode(), JSON, "image/png").body.decode()
    )


def test_unsupported_content_type_is_415(via, error_of):
    answer = via.invoke("default_linear", b"<x/>", "application/xml", JSON)
    assert answer.status == 415 and error_of(answer)["type"] == "UnsupportedContentType"


def test_a_toolkit_error_keeps_the_users_status(via, toolkit, error_of):
    answer = via.invoke("toolkit_error", b"[1]", JSON)
    assert answer.status == 422 == toolkit.invoke("toolkit_error", b"[1]", JSON).status
    assert "with the user's status" in error_of(answer)["message"]


def test_a_failing_transform_fn_is_500(via, toolkit, error_of):
    answer = via.invoke("traced_resnet18", zoo.png(), "image/png")  # its transform_fn refuses the type
    assert answer.status == 500 == toolkit.invoke("traced_resnet18", zoo.png(), "image/png").status
    assert "Content type must be application/octet-stream" in error_of(answer)["message"]


# --- 7. the TargetModel in the log lines of its request ----------------------------------------------------


def test_log_lines_carry_the_target_model(via, caplog, request):
    answer = via.invoke("logs", b"marker-7", "application/octet-stream", **{TARGET_MODEL: "team-b/logs.tar.gz"})
    assert answer.status == 200
    compat_server = request.getfixturevalue("compat_server") if via.name == "serve" else None
    wanted = re.compile(r"\[TargetModel=team-b/logs\.tar\.gz\] user line for .*marker-7")
    deadline = time.monotonic() + 10  # a worker's lines reach serve's log through MMS, a moment later
    while True:
        if via.name == "in-process":
            lines = [record.getMessage() for record in caplog.records]
        else:
            lines = compat_server.log_path.read_text(errors="replace").splitlines()
        if any(wanted.search(line) for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(wanted.search(line) for line in lines)


# --- deliberate differences (README: "Differences from the toolkit"), stated against the toolkit itself ------


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status"),
    [
        (b"[[1, 2, 3]]", JSON, "image/png", 415),  # UnsupportedFormatError: the toolkit's 500
        (b"<x/>", "application/xml", JSON, 415),  # the same error for an unknown Content-Type
        (b"[[1, 2", JSON, JSON, 400),  # json.loads raised: 500 with a traceback there
        (b"1,x,3", CSV, JSON, 400),  # genfromtxt's NaN-filled void array fails in FloatTensor: 500
    ],
)
def test_client_errors_are_4xx_where_the_toolkit_answers_500(
    via, toolkit, error_of, body, content_type, accept, status
):
    theirs = toolkit.invoke("default_linear", body, content_type, accept)
    assert theirs.status == 500
    ours = via.invoke("default_linear", body, content_type, accept)
    assert ours.status == status and "Traceback" not in ours.body.decode()
    error_of(ours)


def test_a_content_type_with_parameters_is_decoded(via, toolkit):
    ours = via.invoke("default_linear", json.dumps(X).encode(), "application/json; charset=utf-8", JSON)
    assert ours.status == 200  # the toolkit matches the whole header: 500 "not supported"
    assert (
        toolkit.invoke("default_linear", json.dumps(X).encode(), "application/json; charset=utf-8", JSON).status == 500
    )


def test_a_one_line_csv_keeps_its_batch_dimension(via, toolkit):
    ours = json.loads(via.invoke("default_linear", b"1,2,3", CSV, JSON).body)
    theirs = json.loads(toolkit.invoke("default_linear", b"1,2,3", CSV, JSON).body)
    assert np.asarray(ours).shape == (1, 2) and np.asarray(theirs).shape == (2,)  # genfromtxt: a 1-D row
    np.testing.assert_allclose(ours[0], theirs, atol=1e-6)
