"""PyTorchHandler through MMS's own Context: content types, Accept, user hooks, errors, batches."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

from torch_mme.settings import Settings

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"
NPZ = "application/x-npz"
X = [[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]]
X_JSON = json.dumps(X).encode()


def read_json(body):
    return np.array(json.loads(body), dtype=np.float32)


def read_csv(body):
    rows = list(csv.reader(io.StringIO(body.decode())))
    return np.array([[float(c) for c in row] for row in rows], dtype=np.float32)


def read_npy(body):
    return np.load(io.BytesIO(body), allow_pickle=False)


def read_npz(body):
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        assert archive.files == ["output"]
        return archive["output"]


READERS = {JSON: read_json, CSV: read_csv, NPY: read_npy, NPZ: read_npz}


@pytest.fixture
def ts(models, serve):
    """The TorchScript reference model, served with the default hooks."""
    return serve(models.torchscript())


# content types in


def test_json_in_json_out(ts, expected):
    status, content_type, body = ts.one(X_JSON, JSON, JSON)
    assert (status, content_type) == (200, JSON)
    np.testing.assert_allclose(read_json(body), expected(X), atol=1e-6)


def test_json_with_charset_and_odd_case(ts, expected):
    status, _, body = ts.one(X_JSON, "Application/JSON; charset=utf-8", JSON)
    assert status == 200
    np.testing.assert_allclose(read_json(body), expected(X), atol=1e-6)


def test_csv_in_csv_out(ts, expected):
    body_in = "\n".join(",".join(str(v) for v in row) for row in X).encode()
    status, content_type, body = ts.one(body_in, CSV, CSV)
    assert (status, content_type) == (200, CSV)
    np.testing.assert_allclose(read_csv(body), expected(X), atol=1e-6)


def test_csv_body_given_as_text(ts, expected):
    """MMS hands text/* bodies over as str unless told not to decode them."""
    status, _, body = ts.one("1,2,3\n", CSV, JSON)
    assert status == 200
    np.testing.assert_allclose(read_json(body), expected([[1, 2, 3]]), atol=1e-6)


def test_npy_in_npy_out(ts, codec_helpers, expected):
    x = np.array(X, dtype=np.float32)
    status, content_type, body = ts.one(codec_helpers.npy(x), NPY, NPY)
    assert (status, content_type) == (200, NPY)
    result = read_npy(body)
    assert result.dtype == np.float32 and result.shape == (2, 2)
    np.testing.assert_allclose(result, expected(X), atol=1e-6)


def test_npz_in_npz_out(ts, codec_helpers, expected):
    status, content_type, body = ts.one(codec_helpers.npz(x=np.array(X, dtype=np.float32)), NPZ, NPZ)
    assert (status, content_type) == (200, NPZ)
    np.testing.assert_allclose(read_npz(body), expected(X), atol=1e-6)


def test_pickled_object_npy_is_refused(ts, codec_helpers):
    body_in = codec_helpers.npy(np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)
    status, content_type, body = ts.one(body_in, NPY, JSON)
    assert (status, content_type) == (400, JSON)
    codec_helpers.error(body, 400, "BadRequest")


def test_float64_npy_is_not_a_server_error(ts, codec_helpers, expected):
    """np.save's default dtype is float64: a model of float32 must not answer that with 500.

    Either the input is cast and answered, or it is the client's mistake (400).
    """
    status, _, body = ts.one(codec_helpers.npy(np.array(X)), NPY, JSON)
    assert status in (200, 400), body
    if status == 200:
        np.testing.assert_allclose(read_json(body), expected(X), atol=1e-6)
    else:
        codec_helpers.error(body, 400, "BadRequest")


def test_missing_content_type_is_read_as_json(ts, expected):
    status, _, body = ts.one(X_JSON, None, JSON)
    assert status == 200
    np.testing.assert_allclose(read_json(body), expected(X), atol=1e-6)


def test_header_names_are_case_insensitive(ts, make_batch, expected):
    from mms.context import RequestProcessor

    make_batch(ts.ctx, [(None, None, None)])
    ts.ctx.request_processor = [RequestProcessor({"content-type": CSV, "ACCEPT": NPY})]
    [body] = ts.handler.handle([{"body": b"1,2,3\n"}], ts.ctx)
    assert ts.ctx.get_response_content_type(0) == NPY
    np.testing.assert_allclose(read_npy(body), expected([[1, 2, 3]]), atol=1e-6)


# Accept


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (JSON, JSON),
        (CSV, CSV),
        (NPY, NPY),
        (NPZ, NPZ),
        ("*/*", JSON),
        (None, JSON),
        ("", JSON),
        ("text/csv;q=0.5, application/x-npy", NPY),
        ("image/png, text/csv", CSV),
    ],
)
def test_accept(ts, expected, accept, content_type):
    status, got_type, body = ts.one(X_JSON, JSON, accept)
    assert (status, got_type) == (200, content_type)
    np.testing.assert_allclose(READERS[content_type](body), expected(X), atol=1e-6)


def test_default_accept_from_settings(models, serve, models_root, expected):
    served = serve(models.torchscript(), Settings(models_root=str(models_root), default_accept=CSV))
    for accept in (None, "*/*"):
        status, content_type, body = served.one(X_JSON, JSON, accept)
        assert (status, content_type) == (200, CSV)
        np.testing.assert_allclose(read_csv(body), expected(X), atol=1e-6)


def test_unsupported_accept_is_415_as_in_the_toolkit(ts, codec_helpers):
    status, content_type, body = ts.one(X_JSON, JSON, "image/png")
    assert (status, content_type) == (415, JSON)
    error = codec_helpers.error(body, 415, "UnsupportedAccept")
    assert "image/png" in error["message"]
    assert ts.ctx.get_response_status(0)[1] == error["message"]


def test_csv_accept_of_a_3d_result_is_406(ts, codec_helpers):
    status, _, body = ts.one(json.dumps([[[1, 2, 3]]]).encode(), JSON, CSV)
    assert status == 406
    codec_helpers.error(body, 406, "NotAcceptable")


# request errors


def test_unsupported_content_type_is_415(ts, codec_helpers):
    status, content_type, body = ts.one(b"\x89PNG\r\n\x1a\n", "image/png", JSON)
    assert (status, content_type) == (415, JSON)
    assert "image/png" in codec_helpers.error(body, 415, "UnsupportedContentType")["message"]


@pytest.mark.parametrize(
    "body_in", [b"[[1, 2, 3", b"[[1, 2, 3], [4, 5]]", b'{"inputs": [[1, 2, 3]]}', b'[["a", "b", "c"]]']
)
def test_undecodable_json_is_400(ts, codec_helpers, body_in):
    status, content_type, body = ts.one(body_in, JSON, JSON)
    assert (status, content_type) == (400, JSON)
    codec_helpers.error(body, 400, "BadRequest")


def test_wrong_shape_is_400_torchscript(ts, codec_helpers):
    status, _, body = ts.one(json.dumps([[1, 2, 3, 4, 5]]).encode(), JSON, JSON)
    assert status == 400
    codec_helpers.error(body, 400, "BadRequest")


def test_wrong_shape_is_400_eager(models, serve, codec_helpers):
    served = serve(models.state_dict())
    status, _, body = served.one(json.dumps([[1, 2, 3, 4, 5]]).encode(), JSON, JSON)
    assert status == 400
    codec_helpers.error(body, 400, "BadRequest")


def test_missing_body_is_415(ts, codec_helpers):
    status, _, body = ts.send([(None, JSON, JSON)])[0]
    assert status == 415
    codec_helpers.error(body, 415)


# user hooks

HOOKS_WITH_CONTEXT = """
    import json
    import os

    import torch

    SEEN = {}


    def model_fn(model_dir, context):
        SEEN["model_fn"] = context
        model = torch.nn.Linear(3, 2)
        model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
        return model


    def input_fn(body, content_type, context):
        SEEN["input_fn"] = (context, content_type)
        return torch.tensor(json.loads(body)["inputs"], dtype=torch.float32)


    def predict_fn(data, model, context):
        SEEN["predict_fn"] = (context, torch.is_inference_mode_enabled(), model.training)
        return model(data) * 2


    def output_fn(prediction, accept, context):
        SEEN["output_fn"] = (context, accept)
        return json.dumps({"outputs": prediction.tolist()}), "application/vnd.test+json"
"""

HOOKS_WITHOUT_CONTEXT = """
    import json
    import os

    import torch

    SEEN = {}


    def model_fn(model_dir):
        SEEN["model_fn"] = None
        model = torch.nn.Linear(3, 2)
        model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), weights_only=True))
        return model


    def input_fn(body, content_type):
        SEEN["input_fn"] = (None, content_type)
        return torch.tensor(json.loads(body)["inputs"], dtype=torch.float32)


    def predict_fn(data, model):
        SEEN["predict_fn"] = (None, torch.is_inference_mode_enabled(), model.training)
        return model(data) * 2


    def output_fn(prediction, accept):
        SEEN["output_fn"] = (None, accept)
        return json.dumps({"outputs": prediction.tolist()}), "application/vnd.test+json"
"""


@pytest.mark.parametrize("takes_context", [True, False], ids=["with-context", "without-context"])
def test_all_four_hooks(models, serve, expected, takes_context):
    code = HOOKS_WITH_CONTEXT if takes_context else HOOKS_WITHOUT_CONTEXT
    served = serve(models.state_dict("hooked", code=code))
    seen = served.handler.model.hooks["predict_fn"].fn.__globals__["SEEN"]
    ctx = served.ctx if takes_context else None
    assert seen == {"model_fn": ctx}

    def unwrapped(seen_context):  # request hooks get MMS's context wrapped with this request's headers
        return getattr(seen_context, "_context", seen_context)

    status, content_type, body = served.one(json.dumps({"inputs": X}).encode(), JSON, "*/*")
    assert (status, content_type) == (200, "application/vnd.test+json")
    np.testing.assert_allclose(json.loads(body)["outputs"], 2 * expected(X), atol=1e-5)
    assert (unwrapped(seen["input_fn"][0]), seen["input_fn"][1]) == (ctx, JSON)
    assert (unwrapped(seen["predict_fn"][0]), *seen["predict_fn"][1:]) == (ctx, False, False)  # as it is; eval()
    assert (unwrapped(seen["output_fn"][0]), seen["output_fn"][1]) == (ctx, JSON)  # */* is shown as the default


def test_hook_returning_bytes_is_typed_as_accept(models, serve, expected):
    hooks = """
        def output_fn(prediction, accept):
            return b"ok:" + accept.encode()
    """
    served = serve(models.state_dict("bytes-out", hooks=hooks))
    assert served.one(X_JSON, JSON, CSV) == (200, CSV, b"ok:text/csv")
    assert served.one(X_JSON, JSON, None) == (200, JSON, b"ok:application/json")


def test_output_fn_returning_an_array_is_encoded_for_accept(models, serve, expected):
    hooks = """
        def output_fn(prediction, accept):
            return prediction.numpy() + 1
    """
    served = serve(models.state_dict("array-out", hooks=hooks))
    status, content_type, body = served.one(X_JSON, JSON, NPY)
    assert (status, content_type) == (200, NPY)
    np.testing.assert_allclose(read_npy(body), expected(X) + 1, atol=1e-6)


def test_predict_fn_only(models, serve, expected):
    hooks = """
        def predict_fn(data, model):
            return {"doubled": model(data) * 2, "sum": model(data).sum()}
    """
    served = serve(models.state_dict("predict-only", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 200
    result = json.loads(body)
    np.testing.assert_allclose(result["doubled"], 2 * expected(X), atol=1e-5)
    np.testing.assert_allclose(result["sum"], expected(X).sum(), atol=1e-5)


def test_default_prediction_runs_under_no_grad(ts):
    prediction = ts.handler.model.predict(torch.ones(1, 3, requires_grad=True))
    assert not prediction.requires_grad and not prediction.is_inference()
    assert torch.is_grad_enabled()


TRANSFORM = """
    import json


    def transform_fn(model, body, content_type, accept):
        if content_type != "application/json":
            raise ValueError("only JSON")
        y = model(torch.tensor(json.loads(body), dtype=torch.float32))
        return json.dumps({"y": y.tolist(), "accept": accept, "grad": torch.is_grad_enabled()})
"""


def test_transform_fn(models, serve, expected):
    served = serve(models.state_dict("transform", hooks=TRANSFORM))
    status, content_type, body = served.one(X_JSON, JSON, JSON)
    assert (status, content_type) == (200, JSON)
    result = json.loads(body)
    np.testing.assert_allclose(result["y"], expected(X), atol=1e-6)
    assert result["grad"] is True  # called as it is, as the toolkit does
    assert result["accept"] == JSON


@pytest.mark.parametrize("accept", [None, "*/*"])
def test_transform_fn_sees_the_default_accept(models, serve, accept):
    served = serve(models.state_dict("transform", hooks=TRANSFORM))
    status, content_type, body = served.one(X_JSON, JSON, accept)
    assert (status, content_type) == (200, JSON)
    assert json.loads(body)["accept"] == JSON


def test_transform_fn_failure_is_500(models, serve, codec_helpers):
    served = serve(models.state_dict("transform", hooks=TRANSFORM))
    status, content_type, body = served.one(b"1,2,3", CSV, JSON)
    assert (status, content_type) == (500, JSON)
    assert "only JSON" in codec_helpers.error(body, 500, "PredictionError")["message"]


def test_transform_fn_gets_a_body_of_any_content_type(models, serve):
    hooks = """
        def transform_fn(model, body, content_type, accept):
            return body[::-1], "image/x-reversed"
    """
    served = serve(models.state_dict("any-type", hooks=hooks))
    assert served.one(b"\x89PNG", "image/png", "image/x-reversed") == (200, "image/x-reversed", b"GNP\x89")


# errors raised by user hooks


def test_input_fn_value_error_is_400(models, serve, codec_helpers):
    hooks = """
        def input_fn(body, content_type):
            raise ValueError("expected a field named inputs")
    """
    served = serve(models.state_dict("bad-input", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 400
    assert "expected a field named inputs" in codec_helpers.error(body, 400, "BadRequest")["message"]


def test_input_fn_raising_a_typed_error_keeps_its_status(models, serve, codec_helpers):
    hooks = """
        from torch_mme.errors import UnsupportedContentType


        def input_fn(body, content_type):
            raise UnsupportedContentType("only images")
    """
    served = serve(models.state_dict("typed-input", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 415
    codec_helpers.error(body, 415, "UnsupportedContentType")


def test_predict_fn_zero_division_is_500(models, serve, codec_helpers):
    hooks = """
        def predict_fn(data, model):
            return 1 / 0
    """
    served = serve(models.state_dict("bad-predict", hooks=hooks))
    status, content_type, body = served.one(X_JSON, JSON, JSON)
    assert (status, content_type) == (500, JSON)
    error = codec_helpers.error(body, 500, "PredictionError")
    assert "ZeroDivisionError" in error["message"]
    assert "inference.py" not in error["message"]  # no file names or line numbers from the traceback


def test_output_fn_failure_is_500(models, serve, codec_helpers):
    hooks = """
        def output_fn(prediction, accept):
            raise KeyError("labels")
    """
    served = serve(models.state_dict("bad-output", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 500
    assert "KeyError" in codec_helpers.error(body, 500, "PredictionError")["message"]


def test_predict_fn_multi_line_error_gives_a_one_line_message(models, serve, codec_helpers):
    hooks = """
        def predict_fn(data, model):
            raise RuntimeError("first line\\nTraceback (most recent call last):\\n  File x")
    """
    served = serve(models.state_dict("multi-line", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 500
    assert "RuntimeError" in codec_helpers.error(body, 500, "PredictionError")["message"]


@pytest.mark.parametrize(
    "raise_",
    [
        "raise MemoryError()",
        'raise RuntimeError("DefaultCPUAllocator: can\'t allocate memory: you tried to allocate 1099511627776 bytes")',
        "raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')",
    ],
    ids=["MemoryError", "cpu-allocator", "cuda-oom"],
)
@pytest.mark.parametrize("hook", ["input_fn", "predict_fn", "output_fn"])
def test_out_of_memory_in_a_hook_is_507(models, serve, codec_helpers, hook, raise_):
    args = {"input_fn": "body, content_type", "predict_fn": "data, model", "output_fn": "prediction, accept"}[hook]
    served = serve(models.state_dict("oom", hooks=f"def {hook}({args}):\n    {raise_}\n"))
    status, content_type, body = served.one(X_JSON, JSON, JSON)
    assert (status, content_type) == (507, JSON)
    codec_helpers.error(body, 507, "OutOfMemory")


HUGE = 288230376151711744  # 256 PiB: every allocator refuses it at once


class Greedy(torch.nn.Module):
    """Asks the CPU allocator for more than any machine has."""

    def forward(self, x):
        return torch.empty(288230376151711744, dtype=torch.uint8).sum() + x


def test_real_allocator_failure_in_an_eager_predict_fn_is_507(models, serve, codec_helpers):
    hooks = f"""
        def predict_fn(data, model):
            return torch.empty({HUGE}, dtype=torch.uint8)
    """
    served = serve(models.state_dict("greedy", hooks=hooks))
    status, _, body = served.one(X_JSON, JSON, JSON)
    assert status == 507
    codec_helpers.error(body, 507, "OutOfMemory")


def test_real_allocator_failure_in_torchscript_is_507_without_traceback(models, serve, codec_helpers):
    """TorchScript wraps the allocator's error in a traceback of its source; none of that may reach the client."""
    served = serve(models.torchscript("greedy", Greedy()))
    status, content_type, body = served.one(X_JSON, JSON, JSON)
    assert (status, content_type) == (507, JSON)
    codec_helpers.error(body, 507, "OutOfMemory")
    assert "Traceback" not in served.ctx.get_response_status(0)[1]


# batches


def test_mixed_content_batch(ts, codec_helpers, expected):
    x = np.array(X, dtype=np.float32)
    results = ts.send(
        [
            (X_JSON, JSON, CSV),
            (codec_helpers.npy(x[:1]), NPY, NPY),
            (b"[[1, 2", JSON, JSON),
            (b"4,5,6\n", CSV, "*/*"),
            (X_JSON, JSON, "image/png"),
            (codec_helpers.npz(a=x[1:]), NPZ, NPZ),
        ]
    )
    statuses = [status for status, _, _ in results]
    types = [content_type for _, content_type, _ in results]
    assert statuses == [200, 200, 400, 200, 415, 200]
    assert types == [CSV, NPY, JSON, JSON, JSON, NPZ]
    np.testing.assert_allclose(read_csv(results[0][2]), expected(X), atol=1e-6)
    np.testing.assert_allclose(read_npy(results[1][2]), expected(X[:1]), atol=1e-6)
    codec_helpers.error(results[2][2], 400, "BadRequest")
    np.testing.assert_allclose(read_json(results[3][2]), expected([[4, 5, 6]]), atol=1e-6)
    codec_helpers.error(results[4][2], 415, "UnsupportedAccept")
    np.testing.assert_allclose(read_npz(results[5][2]), expected(X[1:]), atol=1e-6)


def test_a_failing_prediction_answers_only_its_item(models, serve, codec_helpers):
    hooks = """
        def predict_fn(data, model):
            if float(data.sum()) < 0:
                raise ZeroDivisionError("negative")
            return model(data)
    """
    served = serve(models.state_dict("picky", hooks=hooks))
    results = served.send(
        [
            (b"[1, 2, 3]", JSON, JSON),
            (b"[-1, -2, -3]", JSON, JSON),
            (b"[[1, 2, 3, 4]]", JSON, JSON),
            (b"[3, 2, 1]", JSON, JSON),
        ]
    )
    assert [status for status, _, _ in results] == [200, 500, 400, 200]
    codec_helpers.error(results[1][2], 500, "PredictionError")
    codec_helpers.error(results[2][2], 400, "BadRequest")


def test_empty_batch(ts):
    assert ts.handler.handle([], ts.ctx) == []
