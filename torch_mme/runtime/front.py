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
from urllib.parse import parse_qsl, quote, unquote

from handler import model_config, timing
from torch_mme import errors, load_report
from torch_mme.common import is_inside
from torch_mme.runtime import processes
from torch_mme.runtime.admission import MB, Admission
from torch_mme.runtime.httpserver import ByteBudget, QueueFull, Request, Response, error_response, json_response
from torch_mme.runtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from torch_mme.runtime.metrics import ModelMetrics
from torch_mme.runtime.registry import ModelRecord, Registry
from torch_mme.runtime.upstream import UnsafeRequest, Upstream, UpstreamError, UpstreamTimeout
from torch_mme.runtime.watchdog import Watchdog
from torch_mme.settings import Settings

log = logging.getLogger("torch_mme.runtime.front")

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,254}")
"""What a model name may be (full match): SageMaker's names are opaque, MMS routes these."""
LOAD_TIMEOUT_S = 600.0
UNLOAD_WAIT_S = 10.0
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


def _target(record: ModelRecord | None) -> str:
    """`` (TargetModel a/b.tar.gz)`` for log lines, when SageMaker named it: CloudWatch filters by it."""
    return f" (TargetModel {record.target_model})" if record is not None and record.target_model else ""


def model_path(name: str, suffix: str = "") -> str:
    """MMS's path for a validated name, quoted all the same: nothing a client sent reaches MMS raw."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}")
    return f"/models/{quote(name, safe='')}{suffix}"


Route = Callable[..., Awaitable[Response]]


class Front:
    def __init__(self, settings: Settings, upstream: Upstream, root_pid: int | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models_root = os.path.realpath(settings.models_root)
        self.registry = Registry()
        self.admission = Admission(settings, self.registry, root_pid)
        self.watchdog = Watchdog(self.registry, self.restart)
        self.to_mms = ByteBudget(settings.inflight_bytes, settings.max_queued, settings.queue_timeout_s)
        """Request bytes in MMS now: Java's memory for bodies is sized from this bound."""
        self._admitting = asyncio.Lock()
        self._invoking: dict[str, set[asyncio.Task]] = {}
        """The request handlers waiting on MMS, by model: a restart answers them at once."""
        self._abandoned: set[asyncio.Task] = set()
        self.metrics = ModelMetrics() if settings.metrics else None
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
        except UpstreamTimeout as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(exc)
        except UpstreamError as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(exc)

    async def _dispatch(self, request: Request) -> Response:
        segments = request.path.split("/")
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
        if self.metrics is not None:
            label = name if name in self.registry else NOT_LOADED
            self.metrics.invoked(label, response.status, time.perf_counter() - started, timing_value, sent_at)
        return response

    async def _invoke(self, request: Request, name: str) -> Response:
        record = self.registry.get(name)
        if record is not None and record.unloading:
            return error(errors.ModelNotFound(f"Model not found: {name} (it is being unloaded)"))
        if name in self.registry.restarting:
            return _restarting(name)
        headers = [
            (k, v) for k, v in request.headers if k.lower() in FORWARDED_HEADERS or k.lower().startswith("x-amzn-")
        ]
        types = [v for k, v in headers if k.lower() == "content-type"]
        mime = types[0].split(";", 1)[0].strip().lower() if types else ""
        if len(types) > 1:
            return error(errors.BadRequest("a request has one Content-Type header"))
        if mime in FORM_TYPES or mime.startswith("multipart/"):
            return error(errors.UnsupportedContentType(f"Content-Type {mime!r} is not supported"))
        try:
            held = await self.to_mms.acquire(len(request.body))
        except QueueFull as exc:
            return _busy(str(exc))
        task = asyncio.current_task()
        waiting = self._invoking.setdefault(name, set())
        waiting.add(task)
        try:
            with self.registry.in_use(name):
                response = await self.upstream.request(
                    "POST", model_path(name, "/invoke"), headers, request.body, timeout=self.settings.timeout_s + 30.0
                )
                return _one_line(response)
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise  # the server is stopping
            self._abandoned.discard(task)
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled
                task.uncancel()
            return _restarting(name)
        finally:
            self.to_mms.release(held)
            waiting.discard(task)
            if not waiting:
                self._invoking.pop(name, None)

    async def restart(self, record: ModelRecord) -> None:
        """Load again a model whose processes all died; its requests waiting on MMS are answered 503 now."""
        name = record.name
        log.warning("model %s: all its processes died; restarting it (MMS would not)", name)
        self.registry.remove(name)
        self.registry.loading[name] = record.reserved_bytes  # its memory stays reserved; LoadModel answers 409
        self.registry.restarting.add(name)
        for task in self._invoking.get(name, ()):
            if task.cancel():
                self._abandoned.add(task)
        try:
            await self._unload_now(name, reason="its processes died", kind="restart")  # MMS stops retrying it
            self.registry.restarting.discard(name)  # MMS answers for it from here (503 while it loads)
            response = await self._load_in_mms(name, record.url, record.config)
            if response.status == 200:
                self.registry.add(record)
            else:
                await self._failed_load(name, response)
        finally:
            self.registry.loading.pop(name, None)
            self.registry.restarting.discard(name)
        if response.status != 200:
            log.error("model %s could not be restarted (%d); a LoadModel loads it again", name, response.status)
            return
        await self._note_processes(record)
        log.info("model %s restarted", name)

    async def _note_processes(self, record: ModelRecord) -> None:
        """After a load: the model's memory now, and the processes the watchdog checks."""
        record.measured_bytes = await asyncio.to_thread(self.admission.measure, record.name)
        record.processes = await asyncio.to_thread(self.admission.started_for, record.name)
        self.watchdog.watch(record)

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
        return _one_line(await self._unload(name, reason="UnloadModel", kind="request"))

    async def _unload(self, name: str, reason: str, kind: str) -> Response:
        """DELETE in MMS, then wait until the model's processes are gone, so its memory is back.

        An unload never races traffic: it waits for a load of the same name to finish, and for the
        model's requests in flight to be answered, refusing new ones (404) meanwhile. Every MMS
        operation on a name happens while the front holds that name (in ``loading``, or a record
        marked ``unloading``), so two never interleave. A second unload of a model already being
        unloaded waits for the first and answers 404 (MMS's answer for a model it no longer has); it
        never touches a model loaded again under the same name meanwhile.
        """
        await self._wait_until(lambda: name not in self.registry.loading, LOAD_TIMEOUT_S)
        record = self.registry.get(name)
        if record is None:  # unknown here: MMS answers (404); a LoadModel of this name waits (409) meanwhile
            self.registry.loading[name] = 0
            try:
                return await self._unload_now(name, reason)  # not loaded here: nothing to count
            finally:
                self.registry.loading.pop(name, None)
        if record.unloading:
            await self._wait_until(lambda: self.registry.get(name) is not record, LOAD_TIMEOUT_S)
            return _not_found(name)
        record.unloading = True
        try:
            await self._wait_until(lambda: self.registry.in_flight(name) == 0, self.settings.timeout_s + 30.0)
            return await self._unload_now(name, reason, kind)
        finally:
            record.unloading = False

    @staticmethod
    async def _wait_until(condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _unload_now(self, name: str, reason: str, kind: str = "") -> Response:
        """DELETE in MMS; ``kind`` (request, eviction, restart) is the metrics' reason, none for a failed load."""
        record = self.registry.get(name)
        before = await asyncio.to_thread(self.admission.processes_of, name)
        freed = await asyncio.to_thread(processes.uss, before)
        started = time.monotonic()
        response = await self.upstream.request("DELETE", model_path(name), timeout=LOAD_TIMEOUT_S)
        if response.status == 200:
            self.registry.remove(name)
            killed = await asyncio.to_thread(processes.wait_gone, before, UNLOAD_WAIT_S)
            if killed:
                log.warning("killed %d process(es) of %s that outlived its unload", len(killed), name)
            log.info(
                "unloaded %s%s (%s): %d process(es) gone, %.0f MB USS freed, %.2f s",
                name,
                _target(record),
                reason,
                len(before),
                freed / MB,
                time.monotonic() - started,
            )
            if self.metrics is not None and kind:
                self.metrics.unloaded(name, kind, len(self.registry))
        return response

    async def load_model(self, request: Request) -> Response:
        """LoadModel: validate, admit by memory, forward; on failure answer the reason and leave nothing behind."""
        parsed = await self._load_request(request)
        if isinstance(parsed, Response):
            return parsed
        name, url, config = parsed
        if name in self.registry or name in self.registry.loading:
            return _conflict(name)
        started = time.perf_counter()
        record = ModelRecord(name, url, 0, config=config, target_model=request.header(TARGET_MODEL) or "")
        response = await self._load(record)
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

    async def _load(self, record: ModelRecord) -> Response:
        """Admit ``record`` by memory, register it in MMS (once more after an eviction if MMS ran out)."""
        name, url, config = record.name, record.url, record.config
        estimate = await asyncio.to_thread(self.admission.estimate, url, config.workers)
        record.estimated_bytes, record.estimate_detail = estimate.bytes, estimate.detail
        refusal = await self._admit(name, estimate.bytes)
        if refusal is not None:
            return refusal
        try:
            response = await self._load_in_mms(name, url, config)
            if response.status == 507 and self.settings.eviction == "lru" and self.registry.eviction_order():
                # the estimate was low: clear MMS's half-registered model, make room, try once more
                await self._unload_now(name, reason="failed load")
                if await self._evict_one(name):
                    response = await self._load_in_mms(name, url, config)
            if response.status == 200:
                self.registry.add(record)  # before it leaves `loading`: an unload never finds it in neither
            else:
                failure = await self._failed_load(name, response)  # MMS cleaned while the name is still ours
        finally:
            self.registry.loading.pop(name, None)
        if response.status != 200:
            return failure
        await self._note_processes(record)
        log.info(
            "loaded %s%s: estimated %.0f MB (%s), measured %.0f MB USS",
            name,
            _target(record),
            estimate.bytes / MB,
            estimate.detail,
            record.measured_bytes / MB,
        )
        return _one_line(response)

    async def _admit(self, name: str, needed: int) -> Response | None:
        """Reserve room for the load, unloading LRU models first in standalone mode; a 507 response if it cannot."""
        async with self._admitting:
            while True:
                verdict = await asyncio.to_thread(self.admission.check, needed)
                if name in self.registry or name in self.registry.loading:  # taken while we waited
                    return _conflict(name)
                if verdict.fits:
                    self.registry.loading[name] = needed  # the name is this load's from here
                    return None
                if self.settings.eviction != "lru" or not await self._evict_one(name, verdict.reason(name)):
                    log.warning("LoadModel %s refused (507): %s", name, verdict.reason(name))
                    return error(errors.OutOfMemory(verdict.reason(name)))

    async def _evict_one(self, for_name: str, why: str = "the load ran out of memory") -> bool:
        candidates = self.registry.eviction_order()
        if not candidates:
            return False
        victim = candidates[0]
        idle = time.monotonic() - victim.last_used
        log.info(
            "evicting %s%s (least recently used, idle %.1f s, ~%.0f MB) to load %s: %s",
            victim.name,
            _target(victim),
            idle,
            victim.reserved_bytes / MB,
            for_name,
            why,
        )
        response = await self._unload(victim.name, reason=f"evicted for {for_name}", kind="eviction")
        if response.status == 404:
            self.registry.remove(victim.name)
        return response.status in (200, 404)

    async def _load_in_mms(self, name: str, url: str, config: model_config.ModelConfig) -> Response:
        """MMS's register call: a validated name and url, and what the model's own config says MMS runs
        (workers, batching, timeout); the handler and everything else are serve's."""
        load_report.discard(self.settings.run_dir, name)
        payload = json.dumps({"model_name": name, "url": url, **config.register_parameters()}).encode()
        return await self.upstream.request(
            "POST", "/models", [("Content-Type", "application/json")], payload, timeout=LOAD_TIMEOUT_S
        )

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

    async def _failed_load(self, name: str, response: Response) -> Response:
        if response.status == 409:
            return _one_line(response)
        reason = load_report.take(self.settings.run_dir, name)
        status = 507 if response.status == 507 else (reason or {}).get("code", response.status)
        # MMS leaves a 507'd model registered with no workers; a later LoadModel would get 409.
        await self._unload_now(name, reason="failed load")
        if reason is None:
            return _one_line(response)
        log.warning("LoadModel %s failed (%d): %s", name, status, reason.get("message"))
        return error(
            errors.Relayed(status, reason.get("type", "ModelLoadError"), reason.get("message", "model failed to load"))
        )
