"""The public HTTP face of the container: SageMaker's multi-model API in front of MMS.

Requests pass through to MMS, with the container's own rules around them:

- LoadModel (``POST /models``) is checked (a name MMS can route, a ``url``
  inside the models root, a directory that exists) and admitted by memory
  before any worker starts: a model that does not fit answers 507 at once,
  or, in standalone mode (``TORCH_MME_EVICTION=lru``), least-recently-used
  idle models are unloaded until it fits. A failed load answers with the
  handler's own reason and never leaves the name registered (MMS keeps a
  model that failed with 507 registered with no workers; a retry would get 409).
- UnloadModel (``DELETE /models/N``) returns once the model's processes are gone.
- GetModel adds the model's estimated and measured memory.
- Invocations mark the model in use, so eviction never takes it mid-request.
- A model whose processes all died is restarted (``watchdog``): MMS never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from urllib.parse import parse_qsl

from aiohttp import web

from handler import load_report
from handler.settings import Settings
from torch_mme import processes
from torch_mme.admission import MB, Admission
from torch_mme.registry import ModelRecord, Registry
from torch_mme.upstream import Response, Upstream, UpstreamError, UpstreamTimeout
from torch_mme.watchdog import Watchdog

log = logging.getLogger("torch_mme.front")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
LOAD_TIMEOUT_S = 600.0
UNLOAD_WAIT_S = 10.0


def error(status: int, kind: str, message: str) -> web.Response:
    """Every error the front itself answers: a short JSON body, MMS's shape."""
    return web.json_response({"code": status, "type": kind, "message": message}, status=status)


def _to_web(response: Response) -> web.Response:
    body = response.body
    if response.status >= 400 and b"\n" in body.strip():
        # MMS pretty-prints its own errors ("Worker died.", a timeout) over several lines: make them one line
        with contextlib.suppress(ValueError):
            body = json.dumps(json.loads(body)).encode()
    return web.Response(status=response.status, body=body, headers=response.headers)


def _conflict(name: str) -> web.Response:
    return error(409, "ConflictStatusException", f"Model {name} is already registered.")


def _restarting(name: str) -> web.Response:
    return error(503, "ModelRestarting", f"model {name}'s processes died; it is being restarted, retry shortly")


def _not_found(name: str) -> Response:
    body = json.dumps({"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {name}"})
    return Response(404, [("Content-Type", "application/json")], body.encode())


class Front:
    def __init__(self, settings: Settings, upstream: Upstream, root_pid: int | None = None) -> None:
        self.settings = settings
        self.upstream = upstream
        self.models_root = os.path.realpath(settings.models_root)
        self.registry = Registry()
        self.admission = Admission(settings, self.registry, root_pid)
        self.watchdog = Watchdog(self.registry, self.restart)
        self._admitting = asyncio.Lock()
        self._invoking: dict[str, set[asyncio.Task]] = {}
        """The request handlers waiting on MMS, by model: a restart answers them at once."""
        self._abandoned: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_request_mb * 2**20, middlewares=[self._errors])
        app.router.add_post("/models", self.load_model)
        app.router.add_get("/models/{name}", self.describe_model)
        app.router.add_delete("/models/{name}", self.unload_model)
        app.router.add_post("/models/{name}/invoke", self.invoke)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        app.cleanup_ctx.append(self._watching)
        return app

    async def _watching(self, app: web.Application):
        task = asyncio.create_task(self.watchdog.run(), name="watchdog")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

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
        except UpstreamTimeout as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(504, "ModelServerTimeout", str(exc))
        except UpstreamError as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return error(502, "ModelServerUnavailable", str(exc))

    async def _pass(self, request: web.Request, timeout: float | None = None) -> Response:
        body = await request.read()
        return await self.upstream.request(
            request.method,
            request.path_qs,
            list(request.headers.items()),
            body,
            timeout=timeout or self.settings.timeout_s + 30.0,
        )

    async def forward(self, request: web.Request) -> web.Response:
        return _to_web(await self._pass(request))

    async def invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        record = self.registry.get(name)
        if record is not None and record.unloading:
            return error(404, "ModelNotFoundException", f"Model not found: {name} (it is being unloaded)")
        if name in self.registry.restarting:
            return _restarting(name)
        task = asyncio.current_task()
        waiting = self._invoking.setdefault(name, set())
        waiting.add(task)
        try:
            with self.registry.in_use(name):
                return _to_web(await self._pass(request))
        except asyncio.CancelledError:
            if task not in self._abandoned:
                raise  # the client went away
            self._abandoned.discard(task)
            if hasattr(task, "uncancel"):  # Python 3.11+: this cancellation is handled
                task.uncancel()
            return _restarting(name)
        finally:
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
            await self._unload_now(name, reason="its processes died")  # MMS stops retrying the dead worker
            self.registry.restarting.discard(name)  # MMS answers for it from here (503 while it loads)
            response = await self._load_in_mms(name, record.url, record.params)
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
        record.processes = await asyncio.to_thread(processes.started_for, self.admission.root_pid, record.name)

    async def describe_model(self, request: web.Request) -> web.Response:
        response = await self._pass(request)
        record = self.registry.get(request.match_info["name"])
        if response.status != 200 or record is None:
            return _to_web(response)
        details = json.loads(response.body)
        details["memory"] = {
            "estimatedBytes": record.estimated_bytes,
            "estimate": record.estimate_detail,
            "measuredUssBytes": await asyncio.to_thread(self.admission.measure, record.name),
            "lastUsedSecondsAgo": round(time.monotonic() - record.last_used, 3),
            "inFlight": self.registry.in_flight(record.name),
        }
        return web.json_response(details)

    async def unload_model(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        response = await self._unload(name, reason="UnloadModel")
        return _to_web(response)

    async def _unload(self, name: str, reason: str) -> Response:
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
                return await self._unload_now(name, reason)
            finally:
                self.registry.loading.pop(name, None)
        if record.unloading:
            await self._wait_until(lambda: self.registry.get(name) is not record, LOAD_TIMEOUT_S)
            return _not_found(name)
        record.unloading = True
        try:
            await self._wait_until(lambda: self.registry.in_flight(name) == 0, self.settings.timeout_s + 30.0)
            return await self._unload_now(name, reason)
        finally:
            record.unloading = False

    @staticmethod
    async def _wait_until(condition, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _unload_now(self, name: str, reason: str) -> Response:
        before = await asyncio.to_thread(processes.model_processes, os.getpid(), name)
        freed = await asyncio.to_thread(processes.uss, before)
        started = time.monotonic()
        response = await self.upstream.request("DELETE", f"/models/{name}", timeout=LOAD_TIMEOUT_S)
        if response.status == 200:
            self.registry.remove(name)
            killed = await asyncio.to_thread(processes.wait_gone, before, UNLOAD_WAIT_S)
            if killed:
                log.warning("killed %d process(es) of %s that outlived its unload", len(killed), name)
            log.info(
                "unloaded %s (%s): %d process(es) gone, %.0f MB USS freed, %.2f s",
                name,
                reason,
                len(before),
                freed / MB,
                time.monotonic() - started,
            )
        return response

    async def load_model(self, request: web.Request) -> web.Response:
        """LoadModel: validate, admit by memory, forward; on failure answer the reason and leave nothing behind."""
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
        url, problem = self._resolve_url(url)
        if problem is not None:
            return problem
        if name in self.registry or name in self.registry.loading:
            return _conflict(name)

        estimate = await asyncio.to_thread(self.admission.estimate, url)
        refusal = await self._admit(name, estimate.bytes)
        if refusal is not None:
            return refusal
        extra = {k: v for k, v in params.items() if k not in ("model_name", "url")}
        record = ModelRecord(name, url, estimate.bytes, estimate.detail, params=extra)
        try:
            response = await self._load_in_mms(name, url, params)
            if response.status == 507 and self.settings.eviction == "lru" and self.registry.eviction_order():
                # the estimate was low: clear MMS's half-registered model, make room, try once more
                await self._unload_now(name, reason="failed load")
                if await self._evict_one(name):
                    response = await self._load_in_mms(name, url, params)
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
            "loaded %s: estimated %.0f MB (%s), measured %.0f MB USS",
            name,
            estimate.bytes / MB,
            estimate.detail,
            record.measured_bytes / MB,
        )
        return _to_web(response)

    async def _admit(self, name: str, needed: int) -> web.Response | None:
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
                    return error(507, "InsufficientMemory", verdict.reason(name))

    async def _evict_one(self, for_name: str, why: str = "the load ran out of memory") -> bool:
        candidates = self.registry.eviction_order()
        if not candidates:
            return False
        victim = candidates[0]
        idle = time.monotonic() - victim.last_used
        log.info(
            "evicting %s (least recently used, idle %.1f s, ~%.0f MB) to load %s: %s",
            victim.name,
            idle,
            victim.reserved_bytes / MB,
            for_name,
            why,
        )
        response = await self._unload(victim.name, reason=f"evicted for {for_name}")
        if response.status == 404:
            self.registry.remove(victim.name)
        return response.status in (200, 404)

    async def _load_in_mms(self, name: str, url: str, params: dict) -> Response:
        load_report.discard(self.settings.run_dir, name)
        payload = json.dumps({**params, "model_name": name, "url": url}).encode()
        return await self.upstream.request(
            "POST", "/models", [("Content-Type", "application/json")], payload, timeout=LOAD_TIMEOUT_S
        )

    def _resolve_url(self, url: str) -> tuple[str, web.Response | None]:
        """The absolute model directory for a LoadModel ``url`` (relative ones are under the models root)."""
        if url.startswith(("http://", "https://", "s3://", "file:")):
            return url, error(400, "BadRequest", f"url must be a directory under {self.settings.models_root}")
        path = url if os.path.isabs(url) else os.path.join(self.settings.models_root, url)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.models_root]) != self.models_root:
            return url, error(
                400, "ModelOutsideRoot", f"url {url} is outside the models root {self.settings.models_root}"
            )
        if not os.path.isdir(real):
            return url, error(404, "ModelNotFound", f"model directory {url} does not exist")
        return os.path.normpath(path), None

    async def _failed_load(self, name: str, response: Response) -> web.Response:
        if response.status == 409:
            return _to_web(response)
        reason = load_report.take(self.settings.run_dir, name)
        status = 507 if response.status == 507 else (reason or {}).get("code", response.status)
        # MMS leaves a 507'd model registered with no workers; a later LoadModel would get 409.
        await self._unload_now(name, reason="failed load")
        if reason is None:
            return _to_web(response)
        log.warning("LoadModel %s failed (%d): %s", name, status, reason.get("message"))
        return error(status, reason.get("type", "ModelLoadError"), reason.get("message", "model failed to load"))
