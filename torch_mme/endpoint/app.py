"""The SageMaker runtime API over HTTP: what ``boto3.client("sagemaker-runtime")`` calls.

``POST /endpoints/{EndpointName}/invocations`` with the TargetModel header;
``GET /metrics`` (Prometheus text); ``GET /ping``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from torch_mme.endpoint.errors import EndpointError, InternalFailure, ValidationError
from torch_mme.endpoint.metrics import Metrics
from torch_mme.endpoint.router import Router

log = logging.getLogger("torch_mme.endpoint")

TARGET = "X-Amzn-SageMaker-Target-Model"
FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")
MAX_PAYLOAD_BYTES = 6 * 2**20  # InvokeEndpoint's limit


def error_response(error: EndpointError) -> web.Response:
    return web.json_response(
        text=error.body().decode(), status=error.status, headers={"x-amzn-ErrorType": error.type_name}
    )


def make_app(router: Router, metrics: Metrics) -> web.Application:
    async def invocations(request: web.Request) -> web.Response:
        try:
            target = request.headers.get(TARGET)
            if not target:
                raise ValidationError(f"{TARGET} is required: this is a multi-model endpoint (pass TargetModel)")
            body = await request.read()
            headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
            reply = await router.invoke(target, body, headers)
        except web.HTTPRequestEntityTooLarge:
            return _failed(metrics, ValidationError(f"request body is larger than {MAX_PAYLOAD_BYTES} bytes"), 413)
        except EndpointError as error:
            return _failed(metrics, error)
        except Exception:
            log.exception("invocation of %s failed", request.headers.get(TARGET))
            return _failed(metrics, InternalFailure("the endpoint failed; see its log"))
        metrics.count("Invocations")
        response_headers = {"x-Amzn-Invoked-Production-Variant": "AllTraffic"}
        for name in ("Content-Type", "X-Amzn-SageMaker-Custom-Attributes"):
            value = next((v for k, v in reply.headers.items() if k.lower() == name.lower()), None)
            if value:
                response_headers[name] = value
        return web.Response(status=200, body=reply.body, headers=response_headers)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=metrics.prometheus(), content_type="text/plain")

    async def ping(request: web.Request) -> web.Response:
        healthy = await router.container.ping()
        return web.json_response({"status": "Healthy" if healthy else "Unhealthy"}, status=200 if healthy else 503)

    app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
    app.router.add_post("/endpoints/{endpoint}/invocations", invocations)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/ping", ping)
    return app


def _failed(metrics: Metrics, error: EndpointError, status: int | None = None) -> web.Response:
    metrics.count("InvocationErrors", type=error.type_name)
    log.info("invocation failed (%s): %s", error.type_name, error)
    response = error_response(error)
    if status is not None:
        response.set_status(status)
    return response
