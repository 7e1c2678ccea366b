"""The public HTTP face of the container: SageMaker's multi-model API in front of MMS.

Only the container contract's routes are answered (``ROUTES``); anything
else is a JSON 404 or 405 and never reaches MMS, whose management API would
otherwise let a client register code of its choosing. MMS receives only what
the front builds: a validated, quoted model name, a ``url`` inside the
models root, and the headers an invocation carries. Around that:

- LoadModel (``POST /models``) is checked (a name MMS can route, a ``url``
  inside the models root, a directory that exists, no other parameter) and
  admitted by memory before any worker starts: a model that does not fit
  answers 507 at once, or, in standalone mode (``TORCH_MME_EVICTION=lru``),
  least-recently-used idle models are unloaded until it fits. A failed load
  answers with the handler's own reason and never leaves the name registered
  (MMS keeps a model that failed with 507 registered with no workers; a retry
  would get 409).
- UnloadModel (``DELETE /models/N``) returns once the model's processes are gone.
- GetModel adds the model's estimated and measured memory.
- Invocations mark the model in use, so eviction never takes it mid-request,
  and reserve their body's bytes in ``to_mms`` first: Java holds every body in
  flight, and more than its direct memory makes it fail every request and
  report itself Unhealthy. Past the bound a request waits, then gets 503.
- A model whose processes all died is restarted (``watchdog``): MMS never does.
- ``/ping`` is MMS's own health: 503 when Java is gone or says Unhealthy.

What happens to a model (admission, eviction, unload, restart, requests in
flight) is ``lifecycle``'s, on the registry's state per name; the front
parses, checks, calls it and writes the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, unquote

from handler import model_config, timing
from torch_mme import errors
from torch_mme.common import is_inside
from torch_mme.runtime.admission import Admission
from torch_mme.runtime.httpserver import ByteBudget, QueueFull, Request, Response, error_response, json_response
from torch_mme.runtime.lifecycle import (
    MODEL_NAME,
    BeingUnloaded,
    Conflict,
    Lifecycle,
    LoadFailed,
    NoRoom,
    NotFound,
    Refused,
    Restarting,
    StillBusy,
    model_path,
)
from torch_mme.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from torch_mme.runtime.metrics import ModelMetrics
from torch_mme.runtime.registry import ModelRecord, Registry
from torch_mme.runtime.upstream import UnsafeRequest, Upstream, UpstreamError
from torch_mme.settings import Settings

log = logging.getLogger("torch_mme.runtime.front")

LOAD_PARAMETERS = ("model_name", "url")
"""What a LoadModel may say (SageMaker sends exactly these); MMS's other register parameters are the server's."""
LIST_PARAMETERS = ("limit", "next_page_token")
HANDLER_TIMING = timing.HEADER.lower()
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
NOT_LOADED = "(not loaded)"
"""The ``model`` label of invocations of a name that is not loaded."""
FORWARDED_HEADERS = ("content-type", "accept")
"""Invocation headers MMS receives, besides every ``X-Amzn-SageMaker-*`` one."""
FORM_TYPES = ("application/x-www-form-urlencoded",)
"""Bodies MMS's Netty would split into one parameter per field (and ``multipart/*``), with no cap on the
fields: a 3 MiB one ran Java out of heap. No model reads them; they are 415 before MMS."""

error = error_response


def _one_line(response: Response) -> Response:
    body = response.body
    if response.status >= 400 and b"\n" in body.strip():
        # MMS pretty-prints its own errors ("Worker died.", a timeout) over several lines: make them one line
        with contextlib.suppress(ValueError):
            response.body = json.dumps(json.loads(body)).encode()
    return response


def _conflict(name: str) -> Response:
    return error(errors.ModelConflict(f"Model {name} is already registered."))


def _restarting(name: str) -> Response:
    return error(errors.ModelRestarting(f"model {name}'s processes died; it is being restarted, retry shortly"))


def _not_found(name: str) -> Response:
    return error(errors.ModelNotFound(f"Model not found: {name}"))


def _busy(reason: str) -> Response:
    return error(errors.ServiceUnavailable(f"server busy ({reason}); retry"), [("Retry-After", "1")])


def _refusal(refused: Refused) -> Response:
    """The answer to what the lifecycle refused."""
    name = refused.name
    if isinstance(refused, Conflict):
        return _conflict(name)
    if isinstance(refused, BeingUnloaded):
        return error(errors.ModelNotFound(f"Model not found: {name} (it is being unloaded)"))
    if isinstance(refused, Restarting):
        return _restarting(name)
    if isinstance(refused, NotFound):
        return _not_found(name)
    if isinstance(refused, NoRoom):
        return error(errors.OutOfMemory(refused.detail))
    if isinstance(refused, LoadFailed):
        return error(errors.Relayed(refused.status, refused.kind, refused.detail))
    if isinstance(refused, StillBusy):
        return _busy(refused.detail)
    raise TypeError(f"no answer for {refused!r}")


Route = Callable[..., Awaitable[Response]]


class Front:
    def __init__(self, settings: Settings, upstream: Upstream, root_pid: int | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models_root = os.path.realpath(settings.models_root)
        self.registry = Registry()
        self.admission = Admission(settings, self.registry, root_pid)
        self.to_mms = ByteBudget(settings.inflight_bytes, settings.max_queued, settings.queue_timeout_s)
        """Request bytes in MMS now: Java's memory for bodies is sized from this bound."""
        self.metrics = ModelMetrics() if settings.metrics else None
        self.lifecycle = Lifecycle(settings, upstream, self.registry, self.admission, self.metrics)
        self.watchdog = self.lifecycle.watchdog
        self._routes = self.routes()

    # --- routing ---------------------------------------------------------------------------------
    def routes(self) -> dict[tuple[str, ...], dict[str, Route]]:
        """The container contract's routes: path shape (``{name}`` for a model) -> method -> handler; plus
        ``GET /metrics`` unless metrics are off."""
        routes = {
            ("ping",): {"GET": self.ping},
            ("models",): {"GET": self.list_models, "POST": self.load_model},
            ("models", "{name}"): {"GET": self.describe_model, "DELETE": self.unload_model},
            ("models", "{name}", "invoke"): {"POST": self.invoke},
        }
        if self.metrics is not None:
            routes[("metrics",)] = {"GET": self.metrics_text}
        return routes

    async def handle(self, request: Request) -> Response:
        """Route one request; MMS's failures become JSON 502/504."""
        try:
            return await self._dispatch(request)
        except UnsafeRequest as exc:
            return error(exc)
        except UpstreamError as exc:  # a timeout too
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(exc)
        except errors.ServingError as exc:  # any other error of the hierarchy: its own status, never a 500
            log.info("%s %s: %s", request.method, request.path, exc)
            return error(exc)

    async def _dispatch(self, request: Request) -> Response:
        path = request.path
        if request.method == "POST" and path.startswith("/models/") and path.endswith("/invoke"):
            name = path[8:-7]  # the route every invocation takes, found without the general walk below
            if MODEL_NAME.fullmatch(name):
                return await self.invoke(request, name)
        segments = path.split("/")
        if segments[0] != "" or len(segments) < 2:
            return error(errors.BadRequest("the request target must be an absolute path"))
        shape, args = [], []
        for position, segment in enumerate(segments[1:]):
            if position == 1 and segments[1] == "models" and segment:
                try:
                    name = unquote(segment, errors="strict")
                except UnicodeDecodeError:
                    return error(errors.BadRequest("the model name is not valid UTF-8"))
                if not MODEL_NAME.fullmatch(name):
                    return error(
                        errors.BadRequest(f"model name {name[:80]!r} must be 1-255 letters, digits, '.', '_' or '-'")
                    )
                shape.append("{name}")
                args.append(name)
            else:
                shape.append(segment)
        methods = self._routes.get(tuple(shape))
        if methods is None:
            return error(errors.NotFound(f"no such route: {request.method} {request.path[:120]}"))
        handler = methods.get(request.method)
        if handler is None:
            allowed = ", ".join(sorted(methods))
            return error(errors.MethodNotAllowed(f"{request.method} is not allowed here"), [("Allow", allowed)])
        return await handler(request, *args)

    # --- health and listing ----------------------------------------------------------------------
    async def ping(self, request: Request) -> Response:
        """MMS's health: 503 when Java does not answer or calls itself Unhealthy (SageMaker then replaces us)."""
        try:
            response = await self.upstream.request("GET", "/ping", timeout=5.0)
        except UpstreamError as exc:
            return json_response(503, {"status": "Unhealthy", "reason": str(exc)})
        if response.status == 200 and b'"Unhealthy"' in response.body:
            response.status = 503
        return response

    async def metrics_text(self, request: Request) -> Response:
        return Response(200, [("Content-Type", METRICS_CONTENT_TYPE)], self.metrics.text())

    async def list_models(self, request: Request) -> Response:
        query = dict(parse_qsl(request.query))
        unknown = sorted(set(query) - set(LIST_PARAMETERS))
        if unknown:
            return error(errors.BadRequest(f"ListModels takes only {', '.join(LIST_PARAMETERS)}, not {unknown}"))
        if any(not re.fullmatch(r"[0-9]{1,9}", value) for value in query.values()):
            return error(errors.BadRequest("limit and next_page_token must be non-negative integers"))
        path = "/models" + (f"?{'&'.join(f'{k}={v}' for k, v in sorted(query.items()))}" if query else "")
        return await self.upstream.request("GET", path, timeout=30.0)

    # --- invocations -----------------------------------------------------------------------------
    async def invoke(self, request: Request, name: str) -> Response:
        """Invoke the model, recording its metrics (a name that is not loaded counts under ``NOT_LOADED``: a
        client cannot make a series per name it makes up)."""
        sent_at, started = time.time(), time.perf_counter()
        response = await self._invoke(request, name)
        timing_value = None
        for position, (key, value) in enumerate(response.headers):
            if key.lower() == HANDLER_TIMING:  # the handler's word to the front, never to the client
                timing_value = value
                del response.headers[position]
                break
        if self.metrics is not None:  # recorded once the answer is written: not in the client's wait
            label = name if name in self.registry else NOT_LOADED
            elapsed = time.perf_counter() - started
            asyncio.get_running_loop().call_soon(
                self.metrics.invoked, label, response.status, elapsed, timing_value, sent_at
            )
        return response

    async def _invoke(self, request: Request, name: str) -> Response:
        try:
            self.lifecycle.check_serving(name)
        except Refused as exc:
            return _refusal(exc)
        headers, types = [], []
        for key, value in request.headers:
            lower = key.lower()
            if lower in FORWARDED_HEADERS or lower.startswith("x-amzn-"):
                headers.append((key, value))
                if lower == "content-type":
                    types.append(value)
        if types:
            if len(types) > 1:
                return error(errors.BadRequest("a request has one Content-Type header"))
            mime = types[0].split(";", 1)[0].strip().lower()
            if mime in FORM_TYPES or mime.startswith("multipart/"):
                return error(errors.UnsupportedContentType(f"Content-Type {mime!r} is not supported"))
        held = self.to_mms.try_acquire(len(request.body))  # room now: no coroutine to wait in
        if not held:
            try:
                held = await self.to_mms.acquire(len(request.body))
            except QueueFull as exc:
                return _busy(str(exc))
        try:
            return _one_line(await self.lifecycle.invoke(name, headers, request.body))
        except Refused as exc:
            return _refusal(exc)
        finally:
            self.to_mms.release(held)

    # --- models ----------------------------------------------------------------------------------
    async def describe_model(self, request: Request, name: str) -> Response:
        response = await self.upstream.request("GET", model_path(name), timeout=30.0)
        record = self.registry.get(name)
        if response.status != 200 or record is None:
            return _one_line(response)
        details = json.loads(response.body)
        details["memory"] = {
            "estimatedBytes": record.estimated_bytes,
            "estimate": record.estimate_detail,
            "measuredUssBytes": await asyncio.to_thread(self.admission.measure, record.name),
            "lastUsedSecondsAgo": round(time.monotonic() - record.last_used, 3),
            "inFlight": self.registry.in_flight(record.name),
        }
        return json_response(200, details)

    async def unload_model(self, request: Request, name: str) -> Response:
        """UnloadModel: returns once the model's processes are gone (``Lifecycle.unload``)."""
        try:
            return _one_line(await self.lifecycle.unload(name, reason="UnloadModel", kind="request"))
        except Refused as exc:
            return _refusal(exc)

    async def load_model(self, request: Request) -> Response:
        """LoadModel: validate, then ``Lifecycle.load`` (admit by memory, forward; on failure the reason and
        nothing left behind)."""
        parsed = await self._load_request(request)
        if isinstance(parsed, Response):
            return parsed
        name, url, config = parsed
        if self.registry.slot(name) is not None:  # loaded, loading, restarting or being unloaded
            return _conflict(name)
        started = time.perf_counter()
        record = ModelRecord(name, url, 0, config=config, target_model=request.header(TARGET_MODEL) or "")
        try:
            response = _one_line(await self.lifecycle.load(record))
        except Refused as exc:
            response = _refusal(exc)
        if self.metrics is not None:
            seconds = time.perf_counter() - started
            self.metrics.load_finished(name, response.status, seconds, record.measured_bytes, len(self.registry))
        return response

    async def _load_request(self, request: Request) -> tuple[str, str, model_config.ModelConfig] | Response:
        """LoadModel's name, model folder and the folder's config, or the 400/404 that says what is wrong."""
        params: dict = dict(parse_qsl(request.query))
        if request.body:
            try:
                body = json.loads(request.body)
            except (ValueError, TypeError, RecursionError):
                body = None
            if not isinstance(body, dict):
                return error(errors.BadRequest('LoadModel body must be JSON: {"model_name": ..., "url": ...}'))
            params.update(body)
        unknown = sorted(set(params) - set(LOAD_PARAMETERS))
        if unknown:
            return error(
                errors.BadRequest(f"LoadModel takes only model_name and url; unknown parameter(s) {unknown[:5]}")
            )
        name, url = params.get("model_name"), params.get("url")
        if not isinstance(url, str) or not url:
            return error(errors.BadRequest("LoadModel needs a url (the model directory)"))
        if name is None:
            name = os.path.basename(url.rstrip("/"))
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            return error(errors.BadRequest(f"model_name {name!r} must be 1-255 letters, digits, '.', '_' or '-'"))
        url, problem = self._resolve_url(url)
        if problem is not None:
            return problem
        try:
            return name, url, await asyncio.to_thread(model_config.read, url)
        except model_config.InvalidModelConfig as exc:
            return error(exc)

    def _resolve_url(self, url: str) -> tuple[str, Response | None]:
        """The absolute model directory for a LoadModel ``url`` (relative ones are under the models root)."""
        if url.startswith(("http://", "https://", "s3://", "file:")):
            return url, error(errors.BadRequest(f"url must be a directory under {self.settings.models_root}"))
        if not url.isprintable() or len(url) > 4096:
            return url, error(errors.BadRequest("url must be a printable path of at most 4096 characters"))
        path = url if os.path.isabs(url) else os.path.join(self.settings.models_root, url)
        real = os.path.realpath(path)
        if not is_inside(real, self.models_root):
            return url, error(
                errors.ModelOutsideRoot(f"url {url} is outside the models root {self.settings.models_root}")
            )
        if not os.path.isdir(real):
            return url, error(errors.ModelNotFound(f"model directory {url} does not exist"))
        return os.path.normpath(path), None
