"""Each model's life in MMS: load (admission, eviction), invoke, unload, restart after its processes died.

The front parses and checks a request, then calls one of these; each moves
the model's name through the registry's states (``registry.State``) and
talks to MMS only while it holds that name's slot, so two MMS operations on
one name never interleave. What the code must get right, and where:

- a request sent while its model is still loading is in flight (counted by
  name): an unload that follows the load waits for it (``invoke``);
- an unload waits for a load or restart of the name to finish, refuses new
  requests (404) and waits for the ones in flight before MMS's DELETE; a
  second unload of a model being unloaded waits for the first and answers 404,
  never touching a model loaded again under the name meanwhile (``unload``);
- a DELETE of a name not loaded here holds the name while MMS answers, so a
  LoadModel of it meanwhile is 409, never deleted under its feet (``_forget``);
- a load is admitted by memory under one lock; in standalone mode
  least-recently-used idle models are evicted until it fits, a model serving
  a request never is (``_admit``, ``_evict_one``); a load's slot moves from
  LOADING to READY in one step, so an unload never finds the name in neither;
- for a model whose processes died MMS is told to forget it and it is loaded
  again, its requests waiting on MMS answered 503 at once (``restart``).

Refusals are exceptions (``Refused`` and its kinds): the front writes their answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from urllib.parse import quote

from handler import alone
from torch_mme import load_report
from torch_mme.runtime import processes
from torch_mme.runtime.admission import MB, Admission
from torch_mme.runtime.httpserver import Response
from torch_mme.runtime.metrics import ModelMetrics
from torch_mme.runtime.registry import Abandoned, ModelRecord, Registry, Slot, State
from torch_mme.runtime.upstream import Upstream
from torch_mme.runtime.watchdog import Watchdog
from torch_mme.settings import Settings

log = logging.getLogger("torch_mme.runtime.lifecycle")

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,254}")
"""What a model name may be (full match): SageMaker's names are opaque, MMS routes these."""
LOAD_TIMEOUT_S = 600.0
UNLOAD_WAIT_S = 10.0


class Refused(Exception):
    """What the lifecycle will not do now, and why; the front answers it."""

    def __init__(self, name: str, detail: str = "") -> None:
        super().__init__(detail or name)
        self.name, self.detail = name, detail


class Conflict(Refused):
    """409: the name is loaded, being loaded, restarted or unloaded."""


class BeingUnloaded(Refused):
    """404 for a request: an unload is waiting for the model's requests in flight."""


class Restarting(Refused):
    """503 for a request: the model's processes died and it is being restarted."""


class NotFound(Refused):
    """404 for an unload: another unload of the model finished first."""


class NoRoom(Refused):
    """507 before any worker starts: ``detail`` is admission's reason."""


class LoadFailed(Refused):
    """The load failed with the handler's own reason (its load report)."""

    def __init__(self, name: str, status: int, kind: str, message: str) -> None:
        super().__init__(name, message)
        self.status, self.kind = status, kind


class StillBusy(Refused):
    """503: another operation on the name outlasted the wait for it."""


def model_path(name: str, suffix: str = "") -> str:
    """MMS's path for a validated name, quoted all the same: nothing a client sent reaches MMS raw."""
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}")
    return f"/models/{quote(name, safe='')}{suffix}"


def target(record: ModelRecord | None) -> str:
    """`` (TargetModel a/b.tar.gz)`` for log lines, when SageMaker named it: CloudWatch filters by it."""
    return f" (TargetModel {record.target_model})" if record is not None and record.target_model else ""


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        registry: Registry,
        admission: Admission,
        metrics: ModelMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.registry = registry
        self.admission = admission
        self.metrics = metrics
        self.watchdog = Watchdog(registry, self.restart)
        self._admitting = asyncio.Lock()
        """One admission at a time: each sees the memory the one before it reserved."""

    # --- invoke ----------------------------------------------------------------------------------
    def check_serving(self, name: str) -> None:
        """Refuse a request to a model being unloaded (404) or restarted (503); any other goes to MMS, which
        answers for a name it does not have (404) or is still loading (503)."""
        slot = self.registry.slot(name)
        if slot is None:
            return
        if slot.state is State.UNLOADING and slot.record is not None:
            raise BeingUnloaded(name)
        if slot.state is State.RESTARTING:
            raise Restarting(name)

    async def invoke(self, name: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        """MMS's answer for one request, in flight under the model's name until then; ``Restarting`` if the
        model's processes die meanwhile (MMS would hold the request until its timeout)."""
        self.check_serving(name)  # again: the front may have waited for room in ``to_mms`` since
        with self.registry.in_use(name) as flight:
            if flight.count == 1:  # alone for its model: MMS sends it without waiting for a batch (java/Model.java)
                headers = [*headers, (alone.HEADER, "1")]
            try:
                return await self.upstream.request(
                    "POST",
                    model_path(name, "/invoke"),
                    headers,
                    body,
                    timeout=self.settings.timeout_s + 30.0,
                    waiters=flight.waiters,  # ``registry.abandon`` ends the wait
                )
            except Abandoned:
                raise Restarting(name) from None

    # --- load ------------------------------------------------------------------------------------
    async def load(self, record: ModelRecord) -> Response:
        """LoadModel of a checked request: admit by memory, register in MMS (once more after an eviction if MMS
        ran out), note its processes. MMS's answer (200, or its own error), or a ``Refused``."""
        name = record.name
        estimate = await asyncio.to_thread(self.admission.estimate, record.url, record.config.workers)
        record.estimated_bytes, record.estimate_detail = estimate.bytes, estimate.detail
        slot = await self._admit(record)  # LOADING from here: the name is this load's
        failure = None
        try:
            response = await self._register(record)
            if response.status == 507 and self.settings.eviction == "lru" and self.registry.eviction_order():
                # the estimate was low: clear MMS's half-registered model, make room, try once more
                await self._delete_in_mms(slot, reason="failed load")
                if await self._evict_one(name):
                    response = await self._register(record)
            if response.status == 200:
                self.registry.move(slot, State.READY)  # never in neither: an unload finds it loading or ready
            else:
                failure = await self._failed_load(slot, response)  # MMS cleaned while the name is still ours
        finally:
            if slot.state is State.LOADING:
                self.registry.release(slot)
        if failure is not None:
            raise failure
        if response.status != 200:
            return response
        await self._note_processes(record)
        log.info(
            "loaded %s%s: estimated %.0f MB (%s), measured %.0f MB USS",
            name,
            target(record),
            estimate.bytes / MB,
            estimate.detail,
            record.measured_bytes / MB,
        )
        return response

    async def _admit(self, record: ModelRecord) -> Slot:
        """Claim the name with room reserved for the load, unloading LRU models first in standalone mode;
        ``NoRoom`` if it cannot fit, ``Conflict`` if the name was taken while it waited."""
        name, needed = record.name, record.estimated_bytes
        async with self._admitting:
            while True:
                verdict = await asyncio.to_thread(self.admission.check, needed)
                if self.registry.slot(name) is not None:
                    raise Conflict(name)
                if verdict.fits:
                    return self.registry.claim(name, State.LOADING, record, reserved_bytes=needed)
                if self.settings.eviction != "lru" or not await self._evict_one(name, verdict.reason(name)):
                    log.warning("LoadModel %s refused (507): %s", name, verdict.reason(name))
                    raise NoRoom(name, verdict.reason(name))

    async def _evict_one(self, for_name: str, why: str = "the load ran out of memory") -> bool:
        """Unload the least recently used idle model; False if there is none."""
        candidates = self.registry.eviction_order()
        if not candidates:
            return False
        victim = candidates[0]
        log.info(
            "evicting %s%s (least recently used, idle %.1f s, ~%.0f MB) to load %s: %s",
            victim.name,
            target(victim),
            time.monotonic() - victim.last_used,
            victim.reserved_bytes / MB,
            for_name,
            why,
        )
        # READY until here, and nothing awaited since: ``unload`` takes it at once, no request in between
        response = await self.unload(victim.name, reason=f"evicted for {for_name}", kind="eviction", forget=True)
        return response.status in (200, 404)

    async def _register(self, record: ModelRecord) -> Response:
        """MMS's register call: a validated name and url, and what the model's own config says MMS runs
        (workers, batching, timeout); the handler and everything else are serve's."""
        load_report.discard(self.settings.run_dir, record.name)
        payload = {"model_name": record.name, "url": record.url, **record.config.register_parameters()}
        return await self.upstream.request(
            "POST", "/models", [("Content-Type", "application/json")], json.dumps(payload).encode(), LOAD_TIMEOUT_S
        )

    async def _failed_load(self, slot: Slot, response: Response) -> LoadFailed | None:
        """Clear what a failed load left in MMS; the handler's reason, or None to pass MMS's answer on."""
        name = slot.name
        if response.status == 409:
            return None
        reason = load_report.take(self.settings.run_dir, name)
        status = 507 if response.status == 507 else (reason or {}).get("code", response.status)
        # MMS leaves a 507'd model registered with no workers; a later LoadModel would get 409.
        await self._delete_in_mms(slot, reason="failed load")
        if reason is None:
            return None
        log.warning("LoadModel %s failed (%d): %s", name, status, reason.get("message"))
        return LoadFailed(
            name, status, reason.get("type", "ModelLoadError"), reason.get("message", "model failed to load")
        )

    async def _note_processes(self, record: ModelRecord) -> None:
        """After a load: the model's memory now, and the processes the watchdog checks."""
        record.measured_bytes = await asyncio.to_thread(self.admission.measure, record.name)
        record.processes = await asyncio.to_thread(self.admission.started_for, record.name)
        self.watchdog.watch(record)

    # --- unload ----------------------------------------------------------------------------------
    async def unload(self, name: str, reason: str, kind: str, forget: bool = False) -> Response:
        """MMS's DELETE once the model's requests in flight are answered; returns once its processes are gone.

        Waits for a load, restart or unload of the name to finish first; a second unload of a model being
        unloaded answers ``NotFound`` (MMS's 404 for a model it no longer has) once the first is done.
        ``kind`` (request, eviction) is the metrics' reason; ``forget``: drop the record if MMS does not have
        the model (404) rather than keep it.
        """
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while (slot := self.registry.slot(name)) is not None and slot.state is not State.READY:
            unloading = slot.record if slot.state is State.UNLOADING else None
            if not await self.registry.wait_changed(slot, deadline - time.monotonic()):
                raise StillBusy(name, f"model {name} is still {slot.state.value}")
            if unloading is not None and self.registry.get(name) is not unloading:
                raise NotFound(name)
        if slot is None:
            return await self._forget(name, reason)
        self.registry.move(slot, State.UNLOADING)  # new requests 404; not evicted, not restarted
        response = None
        try:
            await self.registry.drained(name, self.settings.timeout_s + 30.0)
            response = await self._delete_in_mms(slot, reason, kind)
            return response
        finally:
            if slot.state is State.UNLOADING:  # MMS kept it, or did not answer
                gone = forget and response is not None and response.status == 404
                self.registry.move(slot, State.GONE if gone else State.READY)

    async def _forget(self, name: str, reason: str) -> Response:
        """A DELETE of a name not loaded here: MMS answers (404); the name is held meanwhile (LoadModel 409)."""
        slot = self.registry.claim(name, State.UNLOADING)
        try:
            return await self._delete_in_mms(slot, reason)  # not loaded here: nothing to count
        finally:
            self.registry.release(slot)

    async def _delete_in_mms(self, slot: Slot, reason: str, kind: str = "") -> Response:
        """DELETE in MMS, then wait until the model's processes are gone, so its memory is back.

        An unload's slot is released as soon as MMS has forgotten the model (a LoadModel of the name may start
        while the old processes exit); a load or restart keeps holding its own. ``kind`` (request, eviction,
        restart) is the metrics' reason, none for a failed load.
        """
        name = slot.name
        before = await asyncio.to_thread(self.admission.processes_of, name)
        freed = await asyncio.to_thread(processes.uss, before)
        started = time.monotonic()
        response = await self.upstream.request("DELETE", model_path(name), timeout=LOAD_TIMEOUT_S)
        if response.status != 200:
            return response
        if slot.state is State.UNLOADING:
            self.registry.release(slot)
        killed = await asyncio.to_thread(processes.wait_gone, before, UNLOAD_WAIT_S)
        if killed:
            log.warning("killed %d process(es) of %s that outlived its unload", len(killed), name)
        log.info(
            "unloaded %s%s (%s): %d process(es) gone, %.0f MB USS freed, %.2f s",
            name,
            target(slot.record),
            reason,
            len(before),
            freed / MB,
            time.monotonic() - started,
        )
        if self.metrics is not None and kind:
            self.metrics.unloaded(name, kind, len(self.registry))
        return response

    # --- restart ---------------------------------------------------------------------------------
    async def restart(self, record: ModelRecord) -> None:
        """Load again a model whose processes all died (the watchdog's call; MMS would not): its requests
        waiting on MMS are answered 503 now, MMS is told to forget it, the same LoadModel is sent again."""
        name = record.name
        if not self.registry.is_ready(record):
            return  # unloaded, or being unloaded, since the watchdog looked
        log.warning("model %s: all its processes died; restarting it (MMS would not)", name)
        slot = self.registry.slot(name)
        self.registry.move(slot, State.RESTARTING, reserved_bytes=record.reserved_bytes)  # LoadModel 409
        self.registry.abandon(name)
        try:
            await self._delete_in_mms(slot, reason="its processes died", kind="restart")  # MMS stops retrying it
            self.registry.move(slot, State.LOADING)  # MMS answers for it from here (503 while it loads)
            response = await self._register(record)
            if response.status == 200:
                self.registry.move(slot, State.READY)
            else:
                await self._failed_load(slot, response)
        finally:
            if slot.state is not State.READY:
                self.registry.release(slot)
        if response.status != 200:
            log.error("model %s could not be restarted (%d); a LoadModel loads it again", name, response.status)
            return
        await self._note_processes(record)
        log.info("model %s restarted", name)
