"""The front's client for MMS: a silent model server is a typed timeout, answered 504 in JSON."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import make_mocked_request

from handler.settings import Settings
from torch_mme.front import Front
from torch_mme.upstream import Upstream, UpstreamTimeout


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
    front = Front(Settings(models_root=str(tmp_path)), Upstream(str(tmp_path / "mms.sock")))

    async def handler(request):
        raise UpstreamTimeout("the model server did not answer within 90 s")

    response = asyncio.run(front._errors(make_mocked_request("POST", "/models/m/invoke"), handler))
    assert response.status == 504
    assert json.loads(response.body) == {
        "code": 504,
        "type": "ModelServerTimeout",
        "message": "the model server did not answer within 90 s",
    }
