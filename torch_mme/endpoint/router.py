"""The data plane: TargetModel -> (download, extract, LoadModel, evict on 507) -> invoke.

A request reads top to bottom: ``invoke`` checks the target, waits for its
model (``_wait_loaded``; one load per target however many requests wait on
it), then calls the container. A miss is ``_load``: fetch the artifact from
the store into the disk cache and extract it safely (``_fetch``), then
LoadModel, unloading least-recently-used models one at a time while the
container answers 507 (``_load_in_container``), as SageMaker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import time
from dataclasses import dataclass

from torch_mme.endpoint import archive
from torch_mme.endpoint.cache import DiskCache
from torch_mme.endpoint.container import Container, ContainerUnavailable, Reply
from torch_mme.endpoint.errors import ModelError, ModelNotReady, ServiceUnavailable, ValidationError
from torch_mme.endpoint.lru import LRU
from torch_mme.endpoint.metrics import Metrics
from torch_mme.endpoint.naming import model_name
from torch_mme.endpoint.store import ArtifactNotFound, InvalidTarget, ModelStore, StoreError, check_target

log = logging.getLogger("torch_mme.endpoint")


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, raised as it is or carried in a StoreError's reason (the OS's own text for it)."""
    return getattr(exc, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc)


def _microseconds(started: float) -> float:
    """Time since ``started`` in microseconds, the unit SageMaker documents for its model timing metrics."""
    return (time.monotonic() - started) * 1e6


@dataclass
class Loaded:
    """A model the container has loaded for us (``Router.loaded`` keeps them in least-recently-used order)."""

    target: str
    in_flight: int = 0


class Router:
    def __init__(
        self,
        store: ModelStore,
        container: Container,
        cache: DiskCache,
        container_root: str,
        metrics: Metrics,
        endpoint_name: str = "local",
        max_wait_s: float = 60.0,
        max_extracted_bytes: int = 8 * 2**30,
    ) -> None:
        self.store = store
        self.container = container
        self.cache = cache
        self.container_root = container_root
        self.metrics = metrics
        self.endpoint_name = endpoint_name
        self.max_wait_s = max_wait_s
        self.max_extracted_bytes = max_extracted_bytes
        self.loaded: LRU[str, Loaded] = LRU()
        self._loading: dict[str, asyncio.Task[None]] = {}

    async def invoke(self, target: str, body: bytes, headers: dict[str, str]) -> Reply:
        sent = target
        try:
            target = check_target(target)
        except InvalidTarget as exc:
            raise ValidationError(str(exc)) from None
        name = model_name(target)
        # the container sees the TargetModel as the client sent it, as SageMaker passes it on
        headers = {**headers, "X-Amzn-SageMaker-Target-Model": sent}
        hit = name in self.loaded and name not in self._loading
        self.metrics.observe("ModelCacheHit", 1.0 if hit else 0.0, target)
        if not hit:
            await self._wait_loaded(target, name)
        reply = await self._call(name, body, headers)
        if reply.status == 404:  # the container lost it (restarted, or unloaded it itself): load it again, once
            log.info("container no longer has %s; loading it again", name)
            self.loaded.pop(name, None)
            await self._wait_loaded(target, name)
            reply = await self._call(name, body, headers)
        while reply.status == 507:  # out of memory at invoke: unload unused models and retry, as SageMaker does
            victim = self._least_recently_used(exclude=name)
            if victim is None:
                break
            log.info("invoking %s answered 507 (%s); unloading %s", target, reply.message(), victim)
            await self._unload(victim)
            self.metrics.count("ModelEvictions")
            reply = await self._call(name, body, headers)
        if reply.status >= 400:
            raise ModelError(reply.status, reply.message(), self.endpoint_name)
        return reply

    async def _call(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        entry = self.loaded.get(name)
        if entry is not None:
            entry.in_flight += 1
        try:
            return await self.container.invoke(name, body, headers)
        except ContainerUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        finally:
            if entry is not None:
                entry.in_flight -= 1
                self.loaded.touch(name)
                self.cache.touch(name)

    async def _wait_loaded(self, target: str, name: str) -> None:
        """Wait for the one load of this target (starting it if needed), at most ``max_wait_s``."""
        task = self._loading.get(name)
        if task is None:
            task = asyncio.create_task(self._load(target, name))
            self._loading[name] = task
            task.add_done_callback(lambda done: self._load_finished(name, done))
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.max_wait_s)
        except TimeoutError:
            raise ModelNotReady(f"model {target} is still loading after {self.max_wait_s:.0f} s; retry") from None
        finally:
            self.metrics.observe("ModelLoadingWaitTime", _microseconds(started), target)

    def _load_finished(self, name: str, task: asyncio.Task[None]) -> None:
        self._loading.pop(name, None)
        if not task.cancelled() and task.exception() is not None:  # retrieved here too: every waiter may have given up
            log.warning("loading %s failed: %s", name, task.exception())

    async def _load(self, target: str, name: str) -> None:
        if name not in self.cache:
            await self._fetch(target, name)
        self.cache.touch(name)
        await self._load_in_container(target, name)

    async def _fetch(self, target: str, name: str) -> None:
        """Download the artifact into the cache folder and extract it safely as ``<root>/<name>/model``.

        On a full disk, delete the least recently used unused artifact and try again, until it fits or nothing
        unused is left, as SageMaker deletes unused artifacts when an instance's disk fills.
        """
        where = f"{self.store.url.rstrip('/')}/{target}"
        while True:
            try:
                extracted = await self._download_and_extract(target, name)
                break
            except ArtifactNotFound:
                raise ValidationError(f"Could not find model data at {where} (TargetModel {target})") from None
            except (StoreError, OSError) as exc:
                victim = self.cache.delete_least_recently_used(keep=self._busy) if _disk_full(exc) else None
                if victim is not None:
                    log.info("disk full while fetching %s; deleted the unused artifact %s", target, victim)
                    self.metrics.count("DiskCacheEvictions")
                    continue
                if isinstance(exc, StoreError):
                    raise ValidationError(f"Failed to download model data from {where}: {exc}") from None
                raise
            except archive.ArchiveError as exc:
                raise ValidationError(f"Failed to extract model data of TargetModel {target}: {exc}") from None
        self.cache.add(name, extracted)
        deleted = self.cache.make_room(0, keep=lambda n: n == name or self._busy(n))
        self.metrics.count("DiskCacheEvictions", len(deleted))

    async def _download_and_extract(self, target: str, name: str) -> int:
        download = os.path.join(self.cache.root, f".{name}.tar.gz")
        try:
            size = await asyncio.to_thread(self.store.size, target)
            self.cache.make_room(size, keep=self._busy)
            started = time.monotonic()
            await asyncio.to_thread(self.store.fetch, target, download)
            self.metrics.observe("ModelDownloadingTime", _microseconds(started), target)
            return await asyncio.to_thread(
                archive.extract, download, self.cache.model_dir(name), self.max_extracted_bytes
            )
        finally:
            with contextlib.suppress(OSError):
                os.remove(download)

    def _busy(self, name: str) -> bool:
        return name in self.loaded or name in self._loading

    async def _load_in_container(self, target: str, name: str) -> None:
        url = posixpath.join(self.container_root, name, "model")
        while True:
            started = time.monotonic()
            try:
                reply = await self.container.load(name, url)
            except ContainerUnavailable as exc:
                raise ServiceUnavailable(str(exc)) from None
            if reply.status in (200, 409):  # 409: it is loaded already (e.g. after our own restart)
                self.metrics.observe("ModelLoadingTime", _microseconds(started), target)
                self.loaded.put(name, Loaded(target))
                self.metrics.gauge("LoadedModelCount", len(self.loaded))
                log.info("loaded %s as %s", target, name)
                return
            if reply.status != 507:
                raise ModelError(reply.status, reply.message(), self.endpoint_name)
            victim = self._least_recently_used(exclude=name)
            if victim is None:
                raise ModelError(507, reply.message(), self.endpoint_name)
            log.info("container has no room for %s (%s); unloading %s", target, reply.message(), victim)
            await self._unload(victim)
            self.metrics.count("ModelEvictions")

    def _least_recently_used(self, exclude: str) -> str | None:
        """The loaded model used longest ago that no request is using (nor ``exclude``, the one that needs room)."""
        return self.loaded.oldest(lambda name: name == exclude or self.loaded[name].in_flight > 0)

    async def _unload(self, name: str) -> None:
        started = time.monotonic()
        self.loaded.pop(name, None)
        try:
            reply = await self.container.unload(name)
        except ContainerUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        self.metrics.observe("ModelUnloadingTime", _microseconds(started), name)
        self.metrics.gauge("LoadedModelCount", len(self.loaded))
        if reply.status not in (200, 404):
            log.warning("unloading %s answered %d: %s", name, reply.status, reply.message())
