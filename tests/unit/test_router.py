"""The local endpoint's router against a fake container and store: where it must do what SageMaker does."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from torch_mme.endpoint.cache import DiskCache
from torch_mme.endpoint.container import LOAD_TIMEOUT_S, Reply
from torch_mme.endpoint.errors import ModelError, ValidationError
from torch_mme.endpoint.metrics import Metrics
from torch_mme.endpoint.naming import model_name
from torch_mme.endpoint.router import Router
from torch_mme.endpoint.store import LocalStore, StoreError


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


# --- the Router against a real folder store on tmp_path and a fake container that keeps its own models ---


class Serving:
    """The container at the Router's boundary: holds at most ``capacity`` models (507 beyond), 404 for others.

    ``gate`` holds every LoadModel until set; ``hold`` holds every invocation of the named model until set.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.models: dict[str, str] = {}
        self.loads: list[tuple[str, str]] = []
        self.unloads: list[str] = []
        self.gate: asyncio.Event | None = None
        self.hold: dict[str, asyncio.Event] = {}

    async def load(self, name: str, url: str) -> Reply:
        self.loads.append((name, url))
        if self.gate is not None:
            await self.gate.wait()
        if name in self.models:
            return Reply(409, {}, b'{"message": "already loaded"}')
        if self.capacity is not None and len(self.models) >= self.capacity:
            return Reply(507, {}, b'{"message": "no room"}')
        self.models[name] = url
        return Reply(200, {}, b'{"status": "loaded"}')

    async def unload(self, name: str) -> Reply:
        self.unloads.append(name)
        return Reply(200 if self.models.pop(name, None) else 404, {}, b"{}")

    async def invoke(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        if name not in self.models:
            return Reply(404, {}, b'{"message": "no such model"}')
        if name in self.hold:
            await self.hold[name].wait()
        return Reply(200, {"Content-Type": "application/json"}, json.dumps({"model": name}).encode())


def real_store(tmp_path: Path, *targets: str) -> LocalStore:
    root = tmp_path / "store"
    for target in targets:
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        (root / target).write_bytes(tiny_archive())
    root.mkdir(exist_ok=True)
    return LocalStore(str(root))


def routed(tmp_path: Path, serving: Serving, *targets: str) -> tuple[Router, Metrics]:
    metrics = Metrics()
    cache = DiskCache(str(tmp_path / "models"), 10 * 2**20)
    return Router(real_store(tmp_path, *targets), serving, cache, "/opt/ml/models", metrics), metrics


def summary(metrics: Metrics, name: str) -> tuple[float, int]:
    """(sum, count) of a summary metric, from the Prometheus text a user reads (prometheus_client's parser)."""
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.prometheus())
        for sample in family.samples
    }
    return values[f"sagemaker_{name}_sum"], int(values[f"sagemaker_{name}_count"])


def answered(reply: Reply) -> str:
    return json.loads(reply.body)["model"]


def test_a_target_not_loaded_is_fetched_extracted_loaded_then_invoked(tmp_path):
    serving = Serving()
    router, metrics = routed(tmp_path, serving, "team/m.tar.gz")
    reply = asyncio.run(router.invoke("team/m.tar.gz", b"x", {}))
    name = model_name("team/m.tar.gz")
    assert answered(reply) == name
    assert serving.loads == [(name, f"/opt/ml/models/{name}/model")]
    assert (tmp_path / "models" / name / "model" / "model.pt").read_bytes() == b"weights"
    assert summary(metrics, "ModelCacheHit") == (0.0, 1)
    assert summary(metrics, "ModelDownloadingTime")[1] == 1
    assert metrics.value("LoadedModelCount") == 1


def test_a_loaded_target_is_invoked_without_a_download_or_a_load(tmp_path):
    serving = Serving()
    router, metrics = routed(tmp_path, serving, "m.tar.gz")

    async def run() -> list[Reply]:
        return [await router.invoke("m.tar.gz", b"x", {}) for _ in range(3)]

    assert [answered(r) for r in asyncio.run(run())] == [model_name("m.tar.gz")] * 3
    assert len(serving.loads) == 1
    assert summary(metrics, "ModelCacheHit") == (2.0, 3)
    assert summary(metrics, "ModelDownloadingTime")[1] == 1


def test_a_target_not_in_the_store_is_a_validation_error_as_sagemaker_answers_it(tmp_path):
    serving = Serving()
    router, _ = routed(tmp_path, serving, "present.tar.gz")
    with pytest.raises(ValidationError) as caught:
        asyncio.run(router.invoke("absent.tar.gz", b"x", {}))
    error = caught.value
    assert (error.status, error.type_name) == (400, "ValidationError")
    assert str(error) == f"Could not find model data at {tmp_path / 'store'}/absent.tar.gz (TargetModel absent.tar.gz)"
    assert json.loads(error.body()) == {"__type": "ValidationError", "message": str(error)}
    assert serving.loads == []
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # no partial download left behind


def test_a_507_at_load_unloads_the_least_recently_used_model_then_retries(tmp_path):
    serving = Serving(capacity=2)
    router, metrics = routed(tmp_path, serving, "a.tar.gz", "b.tar.gz", "c.tar.gz")

    async def run() -> Reply:
        for target in ("a.tar.gz", "b.tar.gz", "a.tar.gz"):  # a used again: b is now the least recently used
            await router.invoke(target, b"x", {})
        return await router.invoke("c.tar.gz", b"x", {})

    assert answered(asyncio.run(run())) == model_name("c.tar.gz")
    assert serving.unloads == [model_name("b.tar.gz")]
    assert set(serving.models) == {model_name("a.tar.gz"), model_name("c.tar.gz")}
    assert [name for name, _ in serving.loads].count(model_name("c.tar.gz")) == 2  # refused once, then loaded
    assert metrics.value("ModelEvictions") == 1
    assert list(router.loaded) == [model_name("a.tar.gz"), model_name("c.tar.gz")]


def test_a_model_in_use_is_not_unloaded_for_room_even_when_least_recently_used(tmp_path):
    serving = Serving(capacity=2)
    router, _ = routed(tmp_path, serving, "a.tar.gz", "b.tar.gz", "c.tar.gz")
    a, b, c = (model_name(f"{x}.tar.gz") for x in "abc")

    async def run() -> None:
        await router.invoke("a.tar.gz", b"x", {})
        await router.invoke("b.tar.gz", b"x", {})
        serving.hold[a] = asyncio.Event()
        slow = asyncio.create_task(router.invoke("a.tar.gz", b"x", {}))  # a is in flight: b goes instead
        await asyncio.sleep(0)
        assert answered(await router.invoke("c.tar.gz", b"x", {})) == c
        serving.hold[a].set()
        assert answered(await slow) == a

    asyncio.run(run())
    assert serving.unloads == [b]


def test_a_507_at_load_with_every_other_model_in_use_reaches_the_client(tmp_path):
    serving = Serving(capacity=1)
    router, _ = routed(tmp_path, serving, "a.tar.gz", "b.tar.gz")
    a = model_name("a.tar.gz")

    async def run() -> None:
        await router.invoke("a.tar.gz", b"x", {})
        serving.hold[a] = asyncio.Event()
        slow = asyncio.create_task(router.invoke("a.tar.gz", b"x", {}))
        await asyncio.sleep(0)
        try:
            with pytest.raises(ModelError) as caught:
                await router.invoke("b.tar.gz", b"x", {})
            assert (caught.value.status, caught.value.original_status) == (424, 507)
        finally:
            serving.hold[a].set()
            await slow

    asyncio.run(run())
    assert serving.unloads == []


def test_concurrent_first_requests_for_one_model_download_and_load_it_once(tmp_path):
    serving = Serving()
    router, metrics = routed(tmp_path, serving, "crowd.tar.gz")

    async def run() -> list[Reply]:
        serving.gate = asyncio.Event()
        requests = [asyncio.create_task(router.invoke("crowd.tar.gz", b"x", {})) for _ in range(10)]
        while not serving.loads:  # the one load has started; every request is waiting on it
            await asyncio.sleep(0.01)
        serving.gate.set()
        return await asyncio.gather(*requests)

    replies = asyncio.run(run())
    assert [answered(r) for r in replies] == [model_name("crowd.tar.gz")] * 10
    assert len(serving.loads) == 1
    assert summary(metrics, "ModelDownloadingTime")[1] == 1
    assert summary(metrics, "ModelCacheHit") == (0.0, 10)


def test_a_model_the_container_lost_is_loaded_again_once(tmp_path):
    serving = Serving()
    router, _ = routed(tmp_path, serving, "m.tar.gz")
    name = model_name("m.tar.gz")

    async def run() -> Reply:
        await router.invoke("m.tar.gz", b"x", {})
        serving.models.clear()  # e.g. the container restarted
        return await router.invoke("m.tar.gz", b"x", {})

    assert answered(asyncio.run(run())) == name
    assert [n for n, _ in serving.loads] == [name, name]
    assert summary(router.metrics, "ModelDownloadingTime")[1] == 1  # the second load reused the extracted artifact
