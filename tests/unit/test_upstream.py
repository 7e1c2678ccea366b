"""The front's client for MMS: a silent model server is a typed timeout, answered 504 in JSON."""

from __future__ import annotations

import asyncio
import json

import pytest

from torch_mme.runtime.front import Front
from torch_mme.runtime.httpserver import Request, Response
from torch_mme.runtime.upstream import Upstream, UpstreamError, UpstreamTimeout
from torch_mme.settings import Settings


def test_a_model_server_that_never_answers_is_an_upstream_timeout(tmp_path):
    path = str(tmp_path / "mms.sock")

    async def run() -> None:
        async def silent(reader, writer):
            await reader.read(1 << 16)
            await asyncio.sleep(5)

        server = await asyncio.start_unix_server(silent, path)
        upstream = Upstream(path)
        try:
            with pytest.raises(UpstreamTimeout, match="did not answer within"):
                await upstream.request("POST", "/models/m/invoke", body=b"[1]", timeout=0.2)
        finally:
            upstream.close()
            server.close()

    asyncio.run(run())


def test_the_front_answers_an_upstream_timeout_with_a_json_504(tmp_path):
    class Silent(Upstream):
        async def request(self, *args, **kwargs):
            raise UpstreamTimeout("the model server did not answer within 90 s")

    front = Front(Settings(models_root=str(tmp_path)), Silent(str(tmp_path / "mms.sock")))
    request = Request("POST", "/models/m/invoke", "", [("Content-Type", "application/json")], b"[1]")
    response = asyncio.run(front.handle(request))
    assert response.status == 504
    assert json.loads(response.body) == {
        "code": 504,
        "type": "ModelServerTimeout",
        "message": "the model server did not answer within 90 s",
    }


def test_ping_is_503_when_mms_is_gone_or_unhealthy(tmp_path):
    class Gone(Upstream):
        async def request(self, *args, **kwargs):
            raise UpstreamError("model server is not reachable: [Errno 111] Connection refused")

    class Unhealthy(Upstream):
        async def request(self, *args, **kwargs):
            return Response(200, [("Content-Type", "application/json")], b'{\n  "status": "Unhealthy"\n}\n')

    ping = Request("GET", "/ping", "", [])
    for upstream in (Gone(str(tmp_path / "s")), Unhealthy(str(tmp_path / "s"))):
        response = asyncio.run(Front(Settings(models_root=str(tmp_path)), upstream).handle(ping))
        assert response.status == 503
        assert json.loads(response.body)["status"] == "Unhealthy"


def test_the_front_answers_only_the_contracts_routes(tmp_path):
    class Recording(Upstream):
        calls: list = []

        async def request(self, method, path, *args, **kwargs):
            self.calls.append((method, path))
            return Response(200, [], b"{}")

    upstream = Recording(str(tmp_path / "s"))
    front = Front(Settings(models_root=str(tmp_path)), upstream)
    for method, path, status in [
        ("POST", "/models/", 404),
        ("PUT", "/models/m", 405),
        ("GET", "/predictions/m", 404),
        ("DELETE", "/models/m%0D%0AX", 400),
        ("GET", "/models/m%0A", 400),
        ("POST", "/models/a%20b/invoke", 400),
        ("GET", "//models", 404),
    ]:
        response = asyncio.run(front.handle(Request(method, path, "", [])))
        assert response.status == status, (method, path, response.body)
    assert upstream.calls == []


def test_bodies_mms_would_split_into_fields_and_unsafe_values_are_refused_before_mms(tmp_path):
    """Found by review: MMS's Netty splits form and multipart bodies into uncapped fields (Java ran out of
    heap), and values the MMS client refuses were a 500 with a traceback."""

    class Recording(Upstream):
        calls: list = []

        async def request(self, method, path, headers=None, body=b"", **kwargs):
            from torch_mme.runtime.upstream import check_request

            check_request(method, path, headers or [])
            self.calls.append((method, path))
            return Response(200, [], b"{}")

    upstream = Recording(str(tmp_path / "s"))
    front = Front(Settings(models_root=str(tmp_path)), upstream)
    cases = [
        ("POST", "/models/m/invoke", "", [("Content-Type", "application/x-www-form-urlencoded")], 415),
        ("POST", "/models/m/invoke", "", [("Content-Type", "multipart/form-data; boundary=x")], 415),
        ("POST", "/models/m/invoke", "", [("Content-Type", "application/json"), ("content-type", "text/csv")], 400),
        ("POST", "/models/m/invoke", "", [("X-Amzn-SageMaker-Custom-Attributes", "a" * 9000)], 400),
        ("GET", "/models", "limit=\u0663", [], 400),
        ("GET", "/models", "next_page_token=%C2%B2", [], 400),
    ]
    for method, path, query, headers, status in cases:
        response = asyncio.run(front.handle(Request(method, path, query, headers, b"a=1&b=2")))
        assert response.status == status, (headers, query, response.body)
        assert json.loads(response.body)["code"] == status
    assert upstream.calls == []
