"""The image itself: built with docker-build.sh from a wheelhouse, run with the models mounted read-only.

The SageMaker container contract end to end (labels, /ping, LoadModel, invoke, 409, 404, DELETE), a
TargetModel invocation through ``torch-mme endpoint`` attached to the running container, running as
an unprivileged user, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from container.engine import CONTAINER_MODELS_ROOT, ContainerServer, Engine
from tests.integration.conftest import write_script_model, write_torchscript
from tests.integration.test_serve import SCALED_MODEL, npy, unique
from torch_mme.tools.local_server import LocalEndpoint
from torch_mme.tools.packaging import pack

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host folder mounted at /opt/ml/models; readable by the image's unprivileged user too."""
    root = tmp_path_factory.mktemp("opt-ml-models")
    root.chmod(0o755)  # pytest makes it 0700
    return root


@pytest.fixture(scope="module")
def container(engine: Engine, image: str, models_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """The image as SageMaker runs it (its default user, the argument ``serve``)."""
    server = ContainerServer(engine, image, str(models_root))
    server.start()
    try:
        yield server
    finally:
        logs = server.logs()
        server.stop()
        (tmp_path_factory.mktemp("logs") / "container.log").write_text(logs)
    assert engine.run("ps", "-a", "-q", "--filter", f"ancestor={image}").stdout.strip() == "", "a container was left"


def in_container(name: str) -> str:
    return f"{CONTAINER_MODELS_ROOT}/{name}/model"


def test_the_image_declares_the_multi_model_contract(engine: Engine, image: str):
    info = engine.inspect(image)
    config = info["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Entrypoint"] == ["torch-mme"] and config["Cmd"] == ["serve"]
    assert "8080/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TORCH_MME_HOST"] == "0.0.0.0" and env["SAGEMAKER_MULTI_MODEL"] == "true"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    healthcheck = config.get("Healthcheck") or info["Healthcheck"]  # docker has it in Config, podman beside it
    assert "/ping" in " ".join(healthcheck["Test"])


def test_ping_and_the_healthcheck_answer(engine: Engine, container: ContainerServer):
    status, _, body = container.request("GET", "/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"
    if engine.name == "podman":  # docker runs HEALTHCHECK on its own schedule only
        assert engine.run("healthcheck", "run", container.container_id, check=False).returncode == 0


def test_two_models_with_different_inputs_answer_like_in_process_torch(container: ContainerServer, models_root: Path):
    json_name, npy_name = unique("linear"), unique("scaled")
    linear = write_torchscript(models_root / json_name / "model", seed=1)
    torch.manual_seed(2)
    scaled = torch.nn.Linear(4, 1).eval()
    write_script_model(models_root / npy_name / "model", SCALED_MODEL, weights=scaled)

    assert container.load(json_name, in_container(json_name))[0] == 200
    assert container.load(npy_name, in_container(npy_name))[0] == 200
    listed = {m["modelName"]: m["modelUrl"] for m in json.loads(container.request("GET", "/models")[2])["models"]}
    assert listed[json_name] == in_container(json_name)

    rows = [[0.5, -1.0, 2.0], [3.0, 0.25, -0.5]]
    status, content_type, body = container.invoke(json_name, json.dumps(rows).encode(), "application/json")
    assert status == 200 and content_type.startswith("application/json")
    np.testing.assert_allclose(json.loads(body), linear(torch.tensor(rows)).detach().numpy(), rtol=1e-6)

    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    status, _, body = container.invoke(npy_name, npy(batch), "application/x-npy", accept="application/json")
    assert status == 200
    expected = scaled(torch.from_numpy(batch) * 2).squeeze(-1).detach().numpy()
    np.testing.assert_allclose(json.loads(body)["doubled_input_score"], expected, rtol=1e-6)


JAVA_CWD = """
import os, psutil
from torch_mme.runtime import mms_java
main = "com.amazonaws.ml.mms.ModelServer"
java = next(p for p in psutil.process_iter(["cmdline"]) if main in (p.info["cmdline"] or []))
print(os.path.isfile(os.path.join(java.cwd(), mms_java.CLASS)), len(list(mms_java.PACKAGE_DIR.glob("classes-*"))))
"""


def test_mms_runs_with_the_corrected_decoder_compiled_into_the_image(engine: Engine, container: ContainerServer):
    """The image's JRE compiled torch-mme's decoder at build time (tests/reliability/test_response_framing.py)."""
    done = engine.run("exec", container.container_id, "python", "-c", JAVA_CWD)
    assert done.stdout.split() == ["True", "1"], done.stdout + done.stderr
    assert "own response decoder" not in container.logs(tail=400)  # serve's warning when it could not


def test_duplicate_load_is_409_unknown_is_404_and_delete_unloads(container: ContainerServer, models_root: Path):
    name = unique("dup")
    write_torchscript(models_root / name / "model")
    assert container.load(name, in_container(name))[0] == 200
    assert container.load(name, in_container(name))[0] == 409
    assert container.invoke(unique("nobody"), b"[[1, 2, 3]]", "application/json")[0] == 404
    assert container.load(unique("missing"), in_container("no-such-folder"))[0] == 404
    assert container.unload(name) == 200
    assert container.invoke(name, b"[[1, 2, 3]]", "application/json")[0] == 404
    assert container.unload(name) == 404


def test_the_models_mount_is_read_only(engine: Engine, container: ContainerServer):
    done = engine.run("exec", container.container_id, "touch", f"{CONTAINER_MODELS_ROOT}/written", check=False)
    assert done.returncode != 0 and "Read-only" in done.stderr


def test_target_model_through_the_local_endpoint_attached_to_the_container(
    container: ContainerServer, models_root: Path, tmp_path: Path
):
    store = tmp_path / "store"
    linear = write_torchscript(tmp_path / "build" / "linear", seed=7)
    pack(str(tmp_path / "build" / "linear"), str(store / "team-a" / "linear.tar.gz"))
    # the endpoint extracts into the host folder; the image sees that folder at /opt/ml/models
    endpoint = LocalEndpoint(
        str(store), str(models_root), container_url=container.url, container_models_root=CONTAINER_MODELS_ROOT
    )
    with endpoint:
        rows = [[1.0, 2.0, 3.0]]
        for _ in range(2):  # a miss (download, extract, LoadModel), then a cache hit
            answer = endpoint.client().invoke_endpoint(
                EndpointName="local",
                TargetModel="team-a/linear.tar.gz",
                ContentType="application/json",
                Accept="application/json",
                Body=json.dumps(rows).encode(),
            )
            expected = linear(torch.tensor(rows)).detach().numpy()
            np.testing.assert_allclose(json.loads(answer["Body"].read()), expected, rtol=1e-6)
        assert "sagemaker_ModelCacheHit" in endpoint.metrics()
    urls = [m["modelUrl"] for m in json.loads(container.request("GET", "/models")[2])["models"]]
    assert any(url.startswith(CONTAINER_MODELS_ROOT + "/") and "linear" in url for url in urls), urls


def test_an_unprivileged_user_serves_and_sigterm_stops_the_container_cleanly(
    engine: Engine, image: str, models_root: Path
):
    name = unique("unprivileged")
    linear = write_torchscript(models_root / name / "model", seed=5)
    server = ContainerServer(engine, image, str(models_root), run_args=["--user", "model-server"])
    server.start()
    try:
        uid = engine.run("exec", server.container_id, "python", "-c", "import os; print(os.getuid())").stdout
        assert uid.strip() == "1000"
        assert server.load(name, in_container(name))[0] == 200
        status, _, body = server.invoke(name, b"[[1, 2, 3]]", "application/json")
        assert status == 200
        expected = linear(torch.tensor([[1.0, 2.0, 3.0]])).detach().numpy()
        np.testing.assert_allclose(json.loads(body), expected, rtol=1e-6)
        logs = server.logs()
        assert "own response decoder" not in logs  # the image's compiled decoder, not a compile as this user
    finally:
        exit_code = server.stop(timeout=20)
    assert exit_code == 0, f"torch-mme serve did not stop cleanly on SIGTERM (exit {exit_code}):\n{logs}"
