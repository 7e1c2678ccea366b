"""The local endpoint with the real boto3 sagemaker-runtime client, in front of a real ``torch-mme serve``."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from tests.integration.conftest import write_script_model, write_torchscript
from tests.integration.test_memory import declared_model
from tests.s3 import moto_s3
from torch_mme.tools.local_server import LocalEndpoint, LocalServer
from torch_mme.tools.packaging import pack

NPY_MODEL = """
    import io
    import numpy as np
    import torch

    def model_fn(model_dir):
        return torch.nn.Identity()

    def input_fn(body, content_type):
        if content_type != "application/x-npy":
            raise ValueError(f"this model takes application/x-npy, not {content_type}")
        return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))

    def output_fn(prediction, accept):
        return {"sum": float(prediction.sum())}, "application/json"
"""


def publish(store: Path, target: str, model_dir: Path) -> None:
    (store / target).parent.mkdir(parents=True, exist_ok=True)
    pack(str(model_dir), str(store / target))


def invoke(client, target: str, body: bytes, content_type: str, accept: str = "application/json") -> dict:
    return client.invoke_endpoint(
        EndpointName="local", TargetModel=target, ContentType=content_type, Accept=accept, Body=body
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a few models, an endpoint that started its own serve, and a boto3 client."""
    base = tmp_path_factory.mktemp("endpoint")
    store, models_root, build = base / "store", base / "models", base / "build"
    store.mkdir()
    linear = write_torchscript(build / "linear", seed=4)
    publish(store, "team-a/linear.tar.gz", build / "linear")
    write_script_model(build / "npy", NPY_MODEL)
    publish(store, "team-b/summer/v1.tar.gz", build / "npy")
    with open(base / "endpoint.log", "wb") as log, LocalEndpoint(str(store), str(models_root), log=log) as endpoint:
        yield {
            "store": store,
            "models_root": models_root,
            "base": base,
            "endpoint": endpoint,
            "client": endpoint.client(),
            "linear": linear,
        }


def test_targets_with_different_input_types_answer_through_boto3(world):
    client = world["client"]
    rows = [[1.0, 2.0, 3.0]]
    answer = invoke(client, "team-a/linear.tar.gz", json.dumps(rows).encode(), "application/json")
    expected = world["linear"](torch.tensor(rows)).detach().numpy()
    np.testing.assert_allclose(json.loads(answer["Body"].read()), expected, rtol=1e-6)
    assert answer["ContentType"].startswith("application/json")

    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.float32))
    answer = invoke(client, "team-b/summer/v1.tar.gz", buffer.getvalue(), "application/x-npy")
    assert json.loads(answer["Body"].read()) == {"sum": 15.0}
    # a cache hit answers the same
    answer = invoke(client, "team-a/linear.tar.gz", json.dumps(rows).encode(), "application/json")
    np.testing.assert_allclose(json.loads(answer["Body"].read()), expected, rtol=1e-6)
    metrics = world["endpoint"].metrics()
    for name in (
        "ModelCacheHit",
        "LoadedModelCount",
        "ModelDownloadingTime",
        "ModelLoadingTime",
        "ModelLoadingWaitTime",
    ):
        assert f"sagemaker_{name}" in metrics


def test_a_missing_target_is_a_validation_error(world):
    client = world["client"]
    with pytest.raises(client.exceptions.ValidationError, match="Could not find model data"):
        invoke(client, "nobody/home.tar.gz", b"[1]", "application/json")
    with pytest.raises(client.exceptions.ValidationError):
        invoke(client, "../outside.tar.gz", b"[1]", "application/json")


def test_a_missing_target_model_header_is_a_validation_error(world):
    client = world["client"]
    with pytest.raises(client.exceptions.ValidationError, match="TargetModel"):
        client.invoke_endpoint(EndpointName="local", ContentType="application/json", Body=b"[1]")


def test_container_errors_come_back_as_model_error_with_the_original_status(world):
    client = world["client"]
    with pytest.raises(client.exceptions.ModelError) as caught:
        invoke(client, "team-b/summer/v1.tar.gz", b"[1, 2]", "application/json")
    error = caught.value.response
    assert error["OriginalStatusCode"] == 400
    assert "application/x-npy" in error["OriginalMessage"]


def hostile(path: Path, member: tarfile.TarInfo, data: bytes = b"pwned") -> None:
    with tarfile.open(path, "w:gz") as archive:
        model = io.BytesIO()
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), model)
        info = tarfile.TarInfo("model.pt")
        info.size = len(model.getvalue())
        archive.addfile(info, io.BytesIO(model.getvalue()))
        if member.isreg():
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        else:
            archive.addfile(member)


def test_corrupt_and_hostile_archives_are_refused_and_write_nothing_outside(world):
    client, store, base = world["client"], world["store"], world["base"]
    canary = base / "canary"
    cases = {}
    (store / "bad").mkdir(exist_ok=True)
    (store / "bad" / "corrupt.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    cases["bad/corrupt.tar.gz"] = "extract"
    traversal = tarfile.TarInfo("../../../canary")
    hostile(store / "bad" / "traversal.tar.gz", traversal)
    cases["bad/traversal.tar.gz"] = "extract"
    absolute = tarfile.TarInfo(str(canary))
    hostile(store / "bad" / "absolute.tar.gz", absolute)
    cases["bad/absolute.tar.gz"] = "extract"
    link = tarfile.TarInfo("code")
    link.type, link.linkname = tarfile.SYMTYPE, str(base)
    hostile(store / "bad" / "symlink.tar.gz", link)
    cases["bad/symlink.tar.gz"] = "extract"
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, str(canary)
    hostile(store / "bad" / "hardlink.tar.gz", hard)
    cases["bad/hardlink.tar.gz"] = "extract"
    under_a_file = tarfile.TarInfo("model.pt/inside")  # hostile() wrote model.pt as a regular file first
    hostile(store / "bad" / "under-a-file.tar.gz", under_a_file)
    cases["bad/under-a-file.tar.gz"] = "is not a folder"
    for target, reason in cases.items():
        with pytest.raises(client.exceptions.ValidationError, match=reason):
            invoke(client, target, b"[[1, 2, 3]]", "application/json")
    assert not canary.exists()
    models_root = world["models_root"]
    leftovers = [p.name for p in models_root.iterdir() if p.name.startswith("bad-")]
    assert leftovers == []


def test_concurrent_first_requests_for_one_target_cause_one_download_and_one_load(world):
    client, store = world["client"], world["store"]
    publish(store, "crowd/model.tar.gz", world["base"] / "build" / "linear")
    before = world["endpoint"].metrics()
    barrier = threading.Barrier(20)

    def first_request(_: int) -> int:
        barrier.wait()
        return invoke(client, "crowd/model.tar.gz", b"[[1, 2, 3]]", "application/json")["ResponseMetadata"][
            "HTTPStatusCode"
        ]

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(first_request, range(20))) == [200] * 20
    after = world["endpoint"].metrics()
    assert _count(after, "ModelLoadingTime") - _count(before, "ModelLoadingTime") == 1
    assert _count(after, "ModelDownloadingTime") - _count(before, "ModelDownloadingTime") == 1


def _count(metrics: str, name: str) -> int:
    for line in metrics.splitlines():
        if line.startswith(f"sagemaker_{name}_count"):
            return int(float(line.split()[-1]))
    return 0


def test_eviction_when_the_container_runs_out_of_memory(tmp_path):
    store, models_root = tmp_path / "store", tmp_path / "models"
    store.mkdir()
    for name in ("a", "b", "c"):
        publish(store, f"{name}.tar.gz", Path(declared_model(tmp_path / "build", name)))
    budget = {"TORCH_MME_MEMORY_BUDGET_MB": "2000", "TORCH_MME_MEMORY_HEADROOM_MB": "100"}
    with (
        LocalServer(str(models_root), env=budget) as server,
        LocalEndpoint(str(store), str(models_root), container_url=server.url) as endpoint,
    ):
        client = endpoint.client()
        for name in ("a", "b", "c", "a"):
            answer = invoke(client, f"{name}.tar.gz", b"[[1, 2, 3]]", "application/json")
            assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        metrics = endpoint.metrics()
        assert "sagemaker_ModelEvictions_total 2" in metrics  # c evicted a, then a evicted b
        assert "sagemaker_LoadedModelCount 2" in metrics
        listed = json.loads(server.request("GET", "/models")[2])["models"]
        assert len(listed) == 2


def test_an_s3_store_served_by_moto(tmp_path):
    build = tmp_path / "build"
    write_torchscript(build / "s3model", seed=9)
    pack(str(build / "s3model"), str(tmp_path / "s3model.tar.gz"))
    with moto_s3() as (endpoint_url, env):
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(tmp_path / "s3model.tar.gz"), "models", "prod/s3model.tar.gz")
        with LocalEndpoint("s3://models/prod", str(tmp_path / "models"), env=env) as endpoint:
            client = endpoint.client()
            answer = invoke(client, "s3model.tar.gz", b"[[1, 2, 3]]", "application/json")
            assert len(json.loads(answer["Body"].read())[0]) == 2
            with pytest.raises(client.exceptions.ValidationError, match="Could not find model data"):
                invoke(client, "missing.tar.gz", b"[[1, 2, 3]]", "application/json")
