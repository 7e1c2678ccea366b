"""The public HTTP face of the container: SageMaker's multi-model API in front of MMS.

Requests pass through to MMS unchanged, except LoadModel (``POST /models``),
which is checked first (a name MMS can route, a ``url`` inside the models
root, a directory that exists) and cleaned up after: a failed load answers
with the handler's own reason and never leaves the name registered. MMS keeps
a model that failed with 507 registered with no workers (a retry would get
409), so the front unregisters it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from urllib.parse import parse_qsl

from aiohttp import web

from handler import load_report
from handler.settings import Settings
from torch_mme.upstream import Upstream, UpstreamError

log = logging.getLogger("torch_mme.front")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
LOAD_TIMEOUT_S = 600.0


def error(status: int, kind: str, message: str) -> web.Response:
    """Every error the front itself answers: a short JSON body, MMS's shape."""
    return web.json_response({"code": status, "type": kind, "message": message}, status=status)


def _forwarded_headers(request: web.Request) -> list[tuple[str, str]]:
    return list(request.headers.items())


def _to_web(response) -> web.Response:
    return web.Response(status=response.status, body=response.body, headers=response.headers)


class Front:
    def __init__(self, settings: Settings, upstream: Upstream) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models_root = os.path.realpath(settings.models_root)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_mb * 2**20, middlewares=[self._errors])
        app.router.add_post("/models", self.load_model)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.max_request_mb
            return error(
                413, "PayloadTooLarge", f"request body is larger than {limit} MiB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
            )
        except web.HTTPException as exc:
            return error(exc.status, type(exc).__name__, exc.reason)
        except UpstreamError as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(502, "ModelServerUnavailable", str(exc))

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        timeout = self.settings.timeout_s + 30.0
        response = await self.upstream.request(
            request.method, request.path_qs, _forwarded_headers(request), body, timeout=timeout
        )
        return _to_web(response)

    async def load_model(self, request: web.Request) -> web.Response:
        """LoadModel: validate, forward, and on failure answer the handler's reason with no name left behind."""
        params = dict(parse_qsl(request.query_string))
        body = await request.read()
        if body:
            try:
                params.update(json.loads(body))
            except (ValueError, TypeError):
                return error(400, "BadRequest", 'LoadModel body must be JSON: {"model_name": ..., "url": ...}')
        name, url = params.get("model_name"), params.get("url")
        if not isinstance(url, str) or not url:
            return error(400, "BadRequest", "LoadModel needs a url (the model directory)")
        if name is None:
            name = os.path.basename(url.rstrip("/"))
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            return error(400, "BadRequest", f"model_name {name!r} must be 1-255 letters, digits, '.', '_' or '-'")
        problem = self._check_url(url)
        if problem is not None:
            return problem
        load_report.discard(self.settings.run_dir, name)
        payload = json.dumps({**params, "model_name": name, "url": url}).encode()
        response = await self.upstream.request(
            "POST", "/models", [("Content-Type", "application/json")], payload, timeout=LOAD_TIMEOUT_S
        )
        if response.status == 200 or response.status == 409:
            return _to_web(response)
        return await self._failed_load(name, response)

    def _check_url(self, url: str) -> web.Response | None:
        if url.startswith(("http://", "https://", "s3://", "file:")):
            return error(400, "BadRequest", f"url must be a directory under {self.settings.models_root}, not {url}")
        real = os.path.realpath(url if os.path.isabs(url) else os.path.join(self.models_root, url))
        if os.path.commonpath([real, self.models_root]) != self.models_root:
            return error(400, "ModelOutsideRoot", f"url {url} is outside the models root {self.settings.models_root}")
        if not os.path.isdir(real):
            return error(404, "ModelNotFound", f"model directory {url} does not exist")
        return None

    async def _failed_load(self, name: str, response) -> web.Response:
        reason = load_report.take(self.settings.run_dir, name)
        status = reason.get("code", response.status) if reason else response.status
        if response.status == 507:
            status = 507
        # MMS leaves a 507'd model registered with no workers; a later LoadModel would get 409.
        cleanup = await self.upstream.request("DELETE", f"/models/{name}", timeout=LOAD_TIMEOUT_S)
        if cleanup.status == 200:
            log.info("unregistered %s after its failed load", name)
        if reason is None:
            return _to_web(response)
        log.warning("LoadModel %s failed (%d): %s", name, status, reason.get("message"))
        return error(status, reason.get("type", "ModelLoadError"), reason.get("message", "model failed to load"))
