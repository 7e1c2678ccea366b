"""The local endpoint's router against a fake container and store: where it must do what SageMaker does."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import pytest

from torch_mme.endpoint.cache import DiskCache
from torch_mme.endpoint.container import LOAD_TIMEOUT_S, Reply
from torch_mme.endpoint.errors import ModelError
from torch_mme.endpoint.metrics import Metrics
from torch_mme.endpoint.naming import model_name
from torch_mme.endpoint.router import Router
from torch_mme.endpoint.store import StoreError


def tiny_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"weights"
        info = tarfile.TarInfo("model.pt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class FakeStore:
    url = "fake://store"

    def __init__(self, full_disk_times: int = 0) -> None:
        self.full_disk_times = full_disk_times
        self.fetched: list[str] = []

    def size(self, target: str) -> int:
        return len(tiny_archive())

    def fetch(self, target: str, dest_path: str) -> int:
        self.fetched.append(target)
        if self.full_disk_times:
            self.full_disk_times -= 1
            raise StoreError(f"cannot write {dest_path}: No space left on device")
        Path(dest_path).write_bytes(tiny_archive())
        return len(tiny_archive())


class FakeContainer:
    def __init__(self, invoke_statuses: list[int] | None = None) -> None:
        self.invoke_statuses = list(invoke_statuses or [])
        self.invoked: list[tuple[str, dict[str, str]]] = []
        self.unloaded: list[str] = []

    async def load(self, name: str, url: str) -> Reply:
        return Reply(200, {}, b"{}")

    async def unload(self, name: str) -> Reply:
        self.unloaded.append(name)
        return Reply(200, {}, b"{}")

    async def invoke(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        self.invoked.append((name, headers))
        status = self.invoke_statuses.pop(0) if self.invoke_statuses else 200
        return Reply(status, {}, b'{"message": "out of memory"}' if status == 507 else b"ok")


def make_router(tmp_path: Path, store: FakeStore, container: FakeContainer) -> tuple[Router, Metrics]:
    metrics = Metrics()
    cache = DiskCache(str(tmp_path / "models"), 10 * 2**20)
    return Router(store, container, cache, "/opt/ml/models", metrics), metrics


def test_the_container_sees_the_target_model_the_client_sent(tmp_path):
    container = FakeContainer()
    router, _ = make_router(tmp_path, FakeStore(), container)
    asyncio.run(router.invoke("/team-a/sam.tar.gz", b"x", {"Content-Type": "text/csv"}))
    name, headers = container.invoked[-1]
    assert name == model_name("team-a/sam.tar.gz")  # a leading '/' is relative to the store
    assert headers["X-Amzn-SageMaker-Target-Model"] == "/team-a/sam.tar.gz"


def test_a_507_at_invoke_unloads_the_least_recently_used_model_and_retries(tmp_path):
    container = FakeContainer()
    router, metrics = make_router(tmp_path, FakeStore(), container)

    async def run() -> Reply:
        await router.invoke("old.tar.gz", b"x", {})
        await router.invoke("new.tar.gz", b"x", {})
        container.invoke_statuses = [507, 200]
        return await router.invoke("new.tar.gz", b"x", {})

    assert asyncio.run(run()).status == 200
    assert container.unloaded == [model_name("old.tar.gz")]
    assert "sagemaker_ModelEvictions_total 1" in metrics.prometheus()


def test_a_507_at_invoke_with_nothing_to_unload_reaches_the_client(tmp_path):
    router, _ = make_router(tmp_path, FakeStore(), FakeContainer([200, 507]))

    async def run() -> None:
        await router.invoke("only.tar.gz", b"x", {})
        await router.invoke("only.tar.gz", b"x", {})

    with pytest.raises(ModelError) as caught:
        asyncio.run(run())
    assert caught.value.original_status == 507


def test_a_full_disk_deletes_unused_artifacts_and_retries(tmp_path):
    store, container = FakeStore(), FakeContainer()
    router, _ = make_router(tmp_path, store, container)

    async def run() -> None:
        await router.invoke("old.tar.gz", b"x", {})
        await router._unload(model_name("old.tar.gz"))  # unloaded: its artifact stays cached, unused
        store.full_disk_times = 1
        await router.invoke("new.tar.gz", b"x", {})

    asyncio.run(run())
    assert store.fetched == ["old.tar.gz", "new.tar.gz", "new.tar.gz"]
    assert model_name("old.tar.gz") not in router.cache
    assert not (tmp_path / "models" / model_name("old.tar.gz")).exists()


def test_timings_are_in_microseconds_and_loads_wait_as_long_as_sagemaker(tmp_path):
    router, metrics = make_router(tmp_path, FakeStore(), FakeContainer())
    asyncio.run(router.invoke("m.tar.gz", b"x", {}))
    assert "microseconds for the container's LoadModel" in metrics.prometheus()
    assert LOAD_TIMEOUT_S == 360
