"""The front's routes, status and body for each (errors included), on the real lifecycle and a fake MMS."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from handler import timing
from tests.unit.fake_mms import FakeMms
from torch_mme.memory import MemoryReading
from torch_mme.runtime.admission import MB
from torch_mme.runtime.front import Front
from torch_mme.runtime.httpserver import Request, Response
from torch_mme.runtime.registry import State
from torch_mme.runtime.upstream import UpstreamError
from torch_mme.settings import Settings

JSON = [("Content-Type", "application/json")]


class World:
    """A front on a fake MMS (``mms``), models under ``root``; ``call`` runs one request on one loop."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.root = tmp_path / "models"
        self.root.mkdir()
        settings = Settings(models_root=str(self.root), run_dir=str(tmp_path / "run"), memory_headroom_mb=0, **settings)
        self.mms = FakeMms(settings.run_dir)
        self.front = Front(settings, self.mms)
        admission = self.front.admission
        reading = MemoryReading(limit_bytes=20_000 * MB, used_bytes=10_000 * MB, source="host")
        admission.read = lambda: reading
        admission.processes_of = lambda name: []
        admission.started_for = lambda name: []
        admission.measure = lambda name: 7 * MB
        admission._base_uss = lambda: 0
        self.loop = asyncio.new_event_loop()

    def model(self, name: str, config: dict | None = None) -> str:
        folder = self.root / name
        folder.mkdir()
        (folder / "torch-mme.json").write_text(json.dumps(config or {"memory_mb": 100}))
        return str(folder)

    def call(self, method: str, path: str, body: bytes = b"", query: str = "", headers=None) -> Response:
        request = Request(method, path, query, list(headers or []), body)
        return self.loop.run_until_complete(self.front.handle(request))

    def load(self, name: str, url: str | None = None) -> Response:
        return self.call("POST", "/models", json.dumps({"model_name": name, "url": url or name}).encode())


@pytest.fixture
def world(tmp_path):
    world = World(tmp_path)
    yield world
    world.loop.close()


def body(response: Response) -> dict:
    return json.loads(response.body)


def error(response: Response) -> tuple[int, str, str]:
    """An error answer's status, type and message; it is one line of JSON with the status as its code."""
    assert b"\n" not in response.body.strip(), response.body
    payload = body(response)
    assert payload["code"] == response.status
    return response.status, payload["type"], payload["message"]


def test_ping_and_list_are_mms_answers(world):
    assert world.call("GET", "/ping").status == 200
    world.model("a")
    assert world.load("a").status == 200
    response = world.call("GET", "/models", query="limit=5&next_page_token=0")
    assert response.status == 200 and [m["modelName"] for m in body(response)["models"]] == ["a"]
    assert ("GET", "/models?limit=5&next_page_token=0") in world.mms.calls
    assert error(world.call("GET", "/models", query="page=2"))[:2] == (400, "BadRequest")


def test_load_model_answers(world):
    world.model("a")
    response = world.load("a")
    assert response.status == 200 and body(response) == {"status": "registered"}  # MMS's answer as it is
    assert error(world.load("a")) == (409, "ConflictStatusException", "Model a is already registered.")
    world.model("named-by-folder")
    assert world.call("POST", "/models", b'{"url": "named-by-folder"}').status == 200
    assert "named-by-folder" in world.mms.models
    cases = [
        (b"[1]", (400, "BadRequest", 'LoadModel body must be JSON: {"model_name": ..., "url": ...}')),
        (b"{", (400, "BadRequest", 'LoadModel body must be JSON: {"model_name": ..., "url": ...}')),
        (
            b'{"url": "a", "handler": "x"}',
            (400, "BadRequest", "LoadModel takes only model_name and url; unknown parameter(s) ['handler']"),
        ),
        (b'{"model_name": "b"}', (400, "BadRequest", "LoadModel needs a url (the model directory)")),
        (
            b'{"model_name": "a b", "url": "a"}',
            (400, "BadRequest", "model_name 'a b' must be 1-255 letters, digits, '.', '_' or '-'"),
        ),
        (b'{"model_name": "b", "url": "s3://bucket/b"}', (400, "BadRequest", None)),
        (b'{"model_name": "b", "url": "../../etc"}', (400, "ModelOutsideRoot", None)),
        (
            b'{"model_name": "b", "url": "missing"}',
            (404, "ModelNotFoundException", "model directory missing does not exist"),
        ),
    ]
    for payload, (status, kind, message) in cases:
        got = error(world.call("POST", "/models", payload))
        assert got[:2] == (status, kind), (payload, got)
        assert message is None or got[2] == message, (payload, got)
    world.model("bad", {"batch_size": 0})
    assert error(world.load("bad"))[:2] == (400, "InvalidModelConfig")
    assert [c for c in world.mms.calls if c == ("POST", "/models")] == [("POST", "/models")] * 2


def test_load_model_refused_by_memory_or_failed_in_the_handler(tmp_path):
    world = World(tmp_path, memory_budget_mb=150)
    world.model("big", {"memory_mb": 200})
    status, kind, message = error(world.load("big"))
    assert (status, kind) == (507, "OutOfMemory") and "needs about 200 MB and 150 MB are free" in message
    world.model("broken")
    report = {"code": 500, "type": "ModelLoadError", "message": "model_fn raised KeyError: 'weights'"}
    world.mms.register_answers["broken"] = [(500, report)]
    assert error(world.load("broken")) == (500, "ModelLoadError", "model_fn raised KeyError: 'weights'")
    world.mms.register_answers["broken"] = [(500, None)]  # no report: MMS's own answer, made one line
    assert error(world.load("broken")) == (500, "InternalServerException", "Failed to start workers")
    assert world.mms.models == set() and world.front.registry.slot("broken") is None
    world.loop.close()


def test_an_error_of_the_hierarchy_raised_inside_a_route_is_its_own_status_not_a_500(world):
    # torch-mme.json changed between LoadModel's check and admission's estimate: the estimate's
    # InvalidModelConfig reaches the front, which answers it as the 400 it is
    from torch_mme import errors

    def changed(model_dir, workers=None):
        raise errors.InvalidModelConfig("torch-mme.json: memory_mb must be a positive number")

    world.front.admission.estimate = changed
    world.model("a")
    status, kind, message = error(world.load("a"))
    assert (status, kind) == (400, "InvalidModelConfig") and "memory_mb" in message
    assert world.load("b", "missing")  # the front still answers afterwards
    assert world.call("GET", "/models/a").status == 404  # nothing half-registered


def test_describe_model_adds_memory(world):
    world.model("a")
    assert world.load("a").status == 200
    response = world.call("GET", "/models/a")
    assert response.status == 200
    memory = body(response)["memory"]
    assert memory["estimatedBytes"] == 100 * MB and memory["measuredUssBytes"] == 7 * MB
    assert memory["inFlight"] == 0 and memory["estimate"]
    assert error(world.call("GET", "/models/b")) == (404, "ModelNotFoundException", "Model not found: b")


def test_unload_model_answers(world):
    world.model("a")
    assert world.load("a").status == 200
    response = world.call("DELETE", "/models/a")
    assert response.status == 200 and world.mms.models == set()
    assert error(world.call("DELETE", "/models/a")) == (404, "ModelNotFoundException", "Model not found: a")


def test_invoke_answers(world):
    world.model("a")
    assert world.load("a").status == 200
    response = world.call("POST", "/models/a/invoke", b"[1]", headers=[*JSON, ("X-Forwarded-For", "x")])
    assert response.status == 200 and response.body == b"[1]"
    assert all(k != timing.HEADER for k, _ in response.headers)  # the handler's word to the front only
    assert error(world.call("POST", "/models/b/invoke", b"[1]", headers=JSON)) == (
        404,
        "ModelNotFoundException",
        "Model not found: b",
    )
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    assert error(world.call("POST", "/models/a/invoke", b"a=1", headers=form))[:2] == (415, "UnsupportedContentType")
    metrics = world.call("GET", "/metrics")
    assert metrics.status == 200
    assert b'torch_mme_model_requests_total{model="a",status="200"} 1.0' in metrics.body
    assert b'model="(not loaded)",status="404"' in metrics.body


def test_invoke_of_a_model_being_unloaded_is_404_and_restarting_is_503(world):
    async def run() -> None:
        world.model("a")
        front, mms = world.front, world.mms
        assert (await front.handle(Request("POST", "/models", "", [], b'{"url": "a"}'))).status == 200
        invoke = Request("POST", "/models/a/invoke", "", JSON, b"[1]")
        answer = mms.hold("POST", "/models/a/invoke")
        held = asyncio.ensure_future(front.handle(invoke))
        await answer.entered.wait()
        unload = asyncio.ensure_future(front.handle(Request("DELETE", "/models/a", "", [])))
        for _ in range(10):
            await asyncio.sleep(0)
        assert front.registry.slot("a").state is State.UNLOADING
        assert error(await front.handle(invoke)) == (
            404,
            "ModelNotFoundException",
            "Model not found: a (it is being unloaded)",
        )
        answer.release.set()
        assert (await held).status == 200 and (await unload).status == 200

        assert (await front.handle(Request("POST", "/models", "", [], b'{"url": "a"}'))).status == 200
        answer = mms.hold("POST", "/models/a/invoke")
        held = asyncio.ensure_future(front.handle(invoke))
        await answer.entered.wait()
        delete = mms.hold("DELETE", "/models/a")
        restart = asyncio.ensure_future(front.watchdog.restart(front.registry.get("a")))
        await delete.entered.wait()
        message = "model a's processes died; it is being restarted, retry shortly"
        assert error(await held) == (503, "ModelRestarting", message)  # answered at once
        assert error(await front.handle(invoke)) == (503, "ModelRestarting", message)
        conflict = await front.handle(Request("POST", "/models", "", [], b'{"url": "a"}'))
        assert error(conflict)[0] == 409
        delete.release.set()
        answer.release.set()
        await restart
        assert (await front.handle(invoke)).status == 200

    world.loop.run_until_complete(asyncio.wait_for(run(), 30))


def test_a_full_queue_to_mms_is_503_with_retry_after(tmp_path):
    world = World(tmp_path, max_queued=0)
    world.model("a")
    assert world.load("a").status == 200
    world.front.to_mms.used = world.front.to_mms.capacity  # MMS holds as many bytes as it may
    response = world.call("POST", "/models/a/invoke", b"[1]", headers=JSON)
    assert error(response)[:2] == (503, "ServiceUnavailable") and ("Retry-After", "1") in response.headers
    world.loop.close()


def test_mms_unreachable_is_502(world):
    async def gone(*args, **kwargs):
        raise UpstreamError("model server is not reachable: [Errno 111] Connection refused")

    world.mms.request = gone
    assert error(world.call("GET", "/models/a")) == (
        502,
        "ModelServerUnavailable",
        "model server is not reachable: [Errno 111] Connection refused",
    )


def test_an_unload_that_outwaits_a_load_of_the_name_is_503_and_leaves_the_load_alone(world, monkeypatch):
    from torch_mme.runtime import lifecycle

    monkeypatch.setattr(lifecycle, "LOAD_TIMEOUT_S", 0.2)

    async def run() -> None:
        world.model("a")
        register = world.mms.hold("POST", "/models")
        load = asyncio.ensure_future(world.front.handle(Request("POST", "/models", "", [], b'{"url": "a"}')))
        await register.entered.wait()
        response = await world.front.handle(Request("DELETE", "/models/a", "", []))
        status, kind, message = error(response)
        assert (status, kind) == (503, "ServiceUnavailable") and "model a is still loading" in message
        assert ("Retry-After", "1") in response.headers
        register.release.set()
        assert (await load).status == 200 and world.mms.models == {"a"}

    world.loop.run_until_complete(asyncio.wait_for(run(), 30))
