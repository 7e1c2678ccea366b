"""Restarts a model whose processes all died: MMS 1.1.11 never starts them again.

MMS restarts a model's worker that dies (it reconnects to the model's Python
server process, which forks a new one). But when the process MMS started for
the model dies (killed, or lost with the launcher's template), MMS only
retries connecting to a socket nobody listens on, with a growing back-off,
and every request to that model waits in its queue until the timeout.

The watchdog scans serve's process tree every few seconds; a registered
model with no process in two scans in a row is handed to ``restart`` (the
front's: requests in flight answered 503 at once, MMS told to forget the
model, the same LoadModel sent again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from torch_mme import processes
from torch_mme.registry import ModelRecord, Registry

log = logging.getLogger("torch_mme.watchdog")

EVERY_S = 2.0


class Watchdog:
    def __init__(
        self,
        registry: Registry,
        root_pid: int,
        restart: Callable[[ModelRecord], Awaitable[None]],
        every_s: float = EVERY_S,
    ) -> None:
        self.registry = registry
        self.root_pid = root_pid
        self.restart = restart
        self.every_s = every_s

    async def run(self) -> None:
        missing: set[str] = set()  # models without a process in the last scan
        while True:
            await asyncio.sleep(self.every_s)
            try:
                missing = await self._scan(missing)
            except Exception:  # the watchdog must outlive any one failure
                log.exception("watchdog scan failed")

    async def _scan(self, missing: set[str]) -> set[str]:
        started = time.monotonic()
        alive = await asyncio.to_thread(processes.by_model, self.root_pid)
        dead = {
            record.name
            for record in self.registry.records()
            # registered before the scan began (its processes existed), and not on its way out
            if record.loaded_at < started and not record.unloading and record.name not in alive
        }
        for name in dead & missing:
            record = self.registry.get(name)
            if record is not None and not record.unloading:
                await self.restart(record)
        return dead - missing
