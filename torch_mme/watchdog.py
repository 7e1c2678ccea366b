"""Restarts a model whose processes all died: MMS 1.1.11 never starts them again.

MMS restarts a model's worker that dies (it reconnects to the model's Python
server process, which forks a new one). But when the process MMS started for
the model dies (killed, or lost with the launcher's template), MMS only
retries connecting to a socket nobody listens on, with a growing back-off,
and every request to that model waits in its queue until the timeout.

After a load the front notes the processes started for the model
(``processes.started_for``); every few seconds the watchdog checks that one
of them still runs (a cheap check per process, no scan of the machine). A
model found dead in two checks in a row is handed to ``restart`` (the front's:
requests in flight answered 503 at once, MMS told to forget the model, the
same LoadModel sent again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from torch_mme import processes
from torch_mme.registry import ModelRecord, Registry

log = logging.getLogger("torch_mme.watchdog")

EVERY_S = 2.0


class Watchdog:
    def __init__(
        self,
        registry: Registry,
        restart: Callable[[ModelRecord], Awaitable[None]],
        every_s: float = EVERY_S,
    ) -> None:
        self.registry = registry
        self.restart = restart
        self.every_s = every_s

    async def run(self) -> None:
        suspects: set[str] = set()  # found dead by the last check
        while True:
            await asyncio.sleep(self.every_s)
            try:
                suspects = await self.check(suspects)
            except Exception:  # the watchdog must outlive any one failure
                log.exception("watchdog check failed")

    async def check(self, suspects: set[str]) -> set[str]:
        """Restart the models dead now and in the last check; returns the ones dead for the first time."""
        records = [r for r in self.registry.records() if r.processes and not r.unloading]
        dead = await asyncio.to_thread(
            lambda: {r.name for r in records if not any(map(processes.running, r.processes))}
        )
        for name in dead & suspects:
            record = self.registry.get(name)
            if record is not None and record.processes and not record.unloading:
                await self.restart(record)
        return dead - suspects


def _dead(records: list[ModelRecord]) -> set[str]:
    return {r.name for r in records if not any(processes.running(p) for p in r.processes)}
