"""The front's ``X-Torch-Mme-Alone`` (handler/alone.py): sent to MMS only for a request with no other of its
model in flight, never a client's own copy, and never seen by the model's code."""

from __future__ import annotations

import asyncio

from mms.context import Context, RequestProcessor

from handler import alone
from handler.service import RequestContext
from tests.unit.test_front import JSON, World
from torch_mme.runtime.httpserver import Request


def _recording(world: World) -> list[tuple[str, list[tuple[str, str]]]]:
    """The path and headers of every invocation the front sends the fake MMS, in order."""
    sent: list[tuple[str, list[tuple[str, str]]]] = []
    request = world.mms.request

    async def recorded(method, path, headers=None, body=b"", timeout=None, waiters=None):
        if path.endswith("/invoke"):
            sent.append((path, list(headers or [])))
        return await request(method, path, headers, body, timeout, waiters)

    world.mms.request = recorded  # the front's and the lifecycle's upstream
    return sent


def _hints(call: tuple[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in call[1] if k.lower() == alone.HEADER.lower()]


def _request(name: str, headers=JSON) -> Request:
    return Request("POST", f"/models/{name}/invoke", "", list(headers), b"[1]")


def test_a_lone_request_is_marked_and_concurrent_ones_are_not(tmp_path):
    world = World(tmp_path)
    try:
        world.model("a")
        world.model("b")
        assert world.load("a").status == 200 and world.load("b").status == 200
        sent = _recording(world)
        assert world.call("POST", "/models/a/invoke", b"[1]", headers=JSON).status == 200
        assert _hints(sent[-1]) == [(alone.HEADER, "1")]

        async def three_at_once():
            hold = world.mms.hold("POST", "/models/a/invoke")
            first = asyncio.ensure_future(world.front.handle(_request("a")))
            await hold.entered.wait()  # in flight in the front, held in "MMS"
            second = asyncio.ensure_future(world.front.handle(_request("a")))
            other = asyncio.ensure_future(world.front.handle(_request("b")))  # another model: alone for its own
            while len(sent) < 4:
                await asyncio.sleep(0)
            hold.release.set()
            return await asyncio.gather(first, second, other)

        answers = world.loop.run_until_complete(three_at_once())
        assert [r.status for r in answers] == [200, 200, 200]
        assert bool(_hints(sent[1])) and sent[1][0] == "/models/a/invoke"  # the first: alone when sent
        hinted = sorted((call[0], bool(_hints(call))) for call in sent[2:])
        assert hinted == [("/models/a/invoke", False), ("/models/b/invoke", True)]
        assert world.call("POST", "/models/a/invoke", b"[1]", headers=JSON).status == 200  # alone again
        assert _hints(sent[-1]) == [(alone.HEADER, "1")]
    finally:
        world.loop.close()


def test_a_clients_own_alone_header_never_reaches_mms(tmp_path):
    world = World(tmp_path)
    try:
        world.model("a")
        assert world.load("a").status == 200
        sent = _recording(world)
        forged = [*JSON, ("X-Torch-Mme-Alone", "1"), ("x-torch-mme-alone", "yes")]

        async def forged_while_another_is_in_flight():
            hold = world.mms.hold("POST", "/models/a/invoke")
            first = asyncio.ensure_future(world.front.handle(_request("a")))
            await hold.entered.wait()
            second = asyncio.ensure_future(world.front.handle(_request("a", forged)))
            while len(sent) < 2:
                await asyncio.sleep(0)
            hold.release.set()
            return await asyncio.gather(first, second)

        assert [r.status for r in world.loop.run_until_complete(forged_while_another_is_in_flight())] == [200, 200]
        assert _hints(sent[1]) == []  # not alone, and the client's copies were dropped
        assert world.call("POST", "/models/a/invoke", b"[1]", headers=forged).status == 200
        assert _hints(sent[-1]) == [(alone.HEADER, "1")]  # alone: the front's one copy, not the client's two
    finally:
        world.loop.close()


def test_the_model_code_never_sees_the_header():
    context = Context("m", "/tmp/m", None, 1, None, "1.1.11")
    headers = {"Content-Type": "application/json", alone.HEADER: "1", "x-torch-mme-alone": "1"}
    context.request_processor = [RequestProcessor(headers)]
    wrapped = RequestContext(context, 0)
    assert wrapped.request_header(alone.HEADER) == ""
    assert wrapped.get_request_header(0, alone.HEADER) is None
    assert context.get_all_request_header(0) == {"Content-Type": "application/json"}
    assert wrapped.request_header("content-type") == "application/json"
