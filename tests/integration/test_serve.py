"""LoadModel, invoke, errors and unload against the real MMS behind ``torch-mme serve``."""

from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np
import torch

from tests.integration.conftest import write_script_model, write_torchscript

SCALED_MODEL = """
    import io
    import numpy as np
    import torch

    def model_fn(model_dir):
        module = torch.nn.Linear(4, 1)
        module.load_state_dict(torch.load(f"{model_dir}/model.pth", weights_only=True))
        return module

    def input_fn(body, content_type):
        if content_type != "application/x-npy":
            raise ValueError(f"this model takes application/x-npy, not {content_type}")
        return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False)).float() * 2

    def output_fn(prediction, accept):
        return {"doubled_input_score": prediction.squeeze(-1).tolist()}, "application/json"
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_two_models_with_different_inputs_answer_like_in_process_torch(server, models_root):
    json_name, npy_name = unique("linear"), unique("scaled")
    linear = write_torchscript(models_root / json_name / "model", seed=1)
    torch.manual_seed(2)
    scaled = torch.nn.Linear(4, 1).eval()
    write_script_model(models_root / npy_name / "model", SCALED_MODEL, weights=scaled)

    assert server.load(json_name, str(models_root / json_name / "model"))[0] == 200
    assert server.load(npy_name, str(models_root / npy_name / "model"))[0] == 200

    rows = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]]
    status, content_type, body = server.invoke(json_name, json.dumps(rows).encode(), "application/json")
    assert status == 200 and content_type.startswith("application/json")
    expected = linear(torch.tensor(rows)).detach().numpy()
    np.testing.assert_allclose(np.array(json.loads(body)), expected, rtol=1e-6)

    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    status, _, body = server.invoke(npy_name, npy(batch), "application/x-npy", accept="application/json")
    assert status == 200
    expected = scaled(torch.from_numpy(batch) * 2).squeeze(-1).detach().numpy()
    np.testing.assert_allclose(json.loads(body)["doubled_input_score"], expected, rtol=1e-6)

    # each model keeps its own input type: the npy model refuses JSON with the user's reason
    status, _, body = server.invoke(npy_name, b"[[1,2,3,4]]", "application/json")
    assert status == 400 and "application/x-npy" in json.loads(body)["message"]


def test_accept_chooses_the_encoding(server, models_root):
    name = unique("enc")
    linear = write_torchscript(models_root / name / "model", seed=3)
    assert server.load(name, str(models_root / name / "model"))[0] == 200
    rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    expected = linear(torch.from_numpy(rows)).detach().numpy()

    status, content_type, body = server.invoke(name, b"1,2,3\n4,5,6\n", "text/csv", accept="text/csv")
    assert (status, content_type) == (200, "text/csv")
    np.testing.assert_allclose(np.loadtxt(io.StringIO(body.decode()), delimiter=","), expected, rtol=1e-6)

    status, content_type, body = server.invoke(name, npy(rows), "application/x-npy", accept="application/x-npy")
    assert (status, content_type) == (200, "application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(body)), expected, rtol=1e-6)

    status, _, body = server.invoke(name, npy(rows), "application/x-npy", accept="*/*")
    assert status == 200 and np.allclose(json.loads(body), expected, rtol=1e-6)


def test_unknown_model_is_404(server):
    status, _, body = server.invoke(unique("nothing"), b"[1]", "application/json")
    assert status == 404 and "not found" in json.loads(body)["message"].lower()


def test_loading_a_loaded_model_again_is_409(server, models_root):
    name = unique("dup")
    write_torchscript(models_root / name / "model")
    assert server.load(name, str(models_root / name / "model"))[0] == 200
    assert server.load(name, str(models_root / name / "model"))[0] == 409


def test_broken_models_fail_at_load_with_their_reason_and_leave_nothing_registered(server, models_root):
    cases = {
        "empty": (lambda d: d.mkdir(parents=True), "no model.pt or model.pth"),
        "corrupt": (
            lambda d: (d.mkdir(parents=True), (d / "model.pt").write_bytes(b"\x00garbage" * 64)),
            "not a TorchScript archive",
        ),
        "raises": (lambda d: write_script_model(d, "raise RuntimeError('boom at import')\n"), "boom at import"),
    }
    for label, (make, reason) in cases.items():
        name = unique(label)
        model_dir = models_root / name / "model"
        make(model_dir)
        status, body = server.load(name, str(model_dir))
        assert status == 500, (label, body)
        assert reason in body["message"], (label, body)
        assert "Traceback" not in body["message"]
        assert server.request("GET", f"/models/{name}")[0] == 404, label
        # the name is free: a fixed model loads under it
        for stale in model_dir.rglob("*"):
            if stale.is_file():
                stale.unlink()
        write_torchscript(model_dir)
        assert server.load(name, str(model_dir))[0] == 200, label


def test_out_of_memory_at_load_is_507_and_leaves_no_zombie(server, models_root):
    name = unique("oom")
    model_dir = models_root / name / "model"
    write_script_model(model_dir, "def model_fn(model_dir):\n    raise MemoryError('needs 64 GiB')\n")
    status, body = server.load(name, str(model_dir))
    assert status == 507 and "needs 64 GiB" in body["message"]
    assert server.request("GET", f"/models/{name}")[0] == 404
    (model_dir / "code" / "inference.py").unlink()
    write_torchscript(model_dir)
    assert server.load(name, str(model_dir))[0] == 200


def test_load_refuses_urls_outside_the_models_root(server, models_root, tmp_path):
    outside = tmp_path / "elsewhere"
    write_torchscript(outside)
    status, body = server.load(unique("outside"), str(outside))
    assert status == 400 and "outside the models root" in body["message"]
    status, body = server.load(unique("dotdot"), str(models_root / ".." / outside.parent.name / "elsewhere"))
    assert status == 400
    status, body = server.load(unique("missing"), str(models_root / "no-such-model"))
    assert status == 404


def test_bad_requests_get_their_status_and_the_worker_stays_up(server, models_root):
    name = unique("bad")
    write_torchscript(models_root / name / "model")
    assert server.load(name, str(models_root / name / "model"))[0] == 200
    workers_before = json.loads(server.request("GET", f"/models/{name}")[2])["workers"]

    cases = [
        (b"[[1, 2,", "application/json", None, 400),
        (b"[[1, 2], [3]]", "application/json", None, 400),
        (b"[[1, 2, 3, 4, 5]]", "application/json", None, 400),  # wrong shape for Linear(3, 2)
        (b"\x93NUMPY garbage", "application/x-npy", None, 400),
        (b"[[1, 2, 3]]", "image/png", None, 415),
        (b"[[1, 2, 3]]", "application/json", "image/png", 415),
    ]
    for body, content_type, accept, expected in cases:
        status, response_type, answer = server.invoke(name, body, content_type, accept)
        assert status == expected, (body, content_type, accept, answer)
        error = json.loads(answer)
        assert response_type.startswith("application/json") and error["code"] == expected
        assert "Traceback" not in answer.decode() and len(answer) < 1000

    assert server.invoke(name, b"[[1, 2, 3]]", "application/json")[0] == 200
    assert json.loads(server.request("GET", f"/models/{name}")[2])["workers"] == workers_before


def test_unload_frees_the_name(server, models_root):
    name = unique("del")
    write_torchscript(models_root / name / "model")
    assert server.load(name, str(models_root / name / "model"))[0] == 200
    assert server.unload(name) == 200
    assert server.invoke(name, b"[[1, 2, 3]]", "application/json")[0] == 404
    assert server.unload(name) == 404
    assert server.load(name, str(models_root / name / "model"))[0] == 200
    listed = json.loads(server.request("GET", "/models")[2])["models"]
    assert name in [m["modelName"] for m in listed]


def test_a_private_run_dir_of_our_own_keeps_its_files_after_a_run(tmp_path):
    """TORCH_MME_RUN_DIR naming an existing folder: serve used to ``rmtree`` it whole when it stopped."""
    from tests.integration.conftest import logged_server

    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "canary").write_text("keep me")
    models = tmp_path / "models"
    write_torchscript(models / "linear" / "model")
    with logged_server(models, tmp_path / "serve.log", env={"TORCH_MME_RUN_DIR": str(run_dir)}) as server:
        assert server.load("linear", str(models / "linear" / "model"))[0] == 200
        assert server.invoke("linear", b"[[1, 2, 3]]", "application/json")[0] == 200
        assert (run_dir / "mms.properties").exists()  # the run's own files are in it
    assert sorted(os.listdir(run_dir)) == ["canary"]
    assert (run_dir / "canary").read_text() == "keep me"
