"""Restarts a model whose processes all died: MMS 1.1.11 never starts them again.

MMS restarts a model's worker that dies (it reconnects to the model's Python
server process, which forks a new one). But when the process MMS started for
the model dies (killed, or its template lost), MMS only
retries connecting to a socket nobody listens on, with a growing back-off,
and every request to that model waits in its queue until the timeout.

After a load the front notes the processes started for the model
(``processes.started_for``) and the watchdog ``watch``es them: one
``pidfd_open`` descriptor per process on the event loop, readable when it
exits. Every few seconds it checks only the models whose processes reported an
exit since (and the ones suspected last time), so its periodic work follows what
changed, not the number of models; where pidfds are unavailable (not Linux 5.3+)
a model's processes are polled instead. A model found dead in two checks in a
row is handed to ``restart`` (``lifecycle``'s: requests in flight answered 503 at
once, MMS told to forget the model, the same LoadModel sent again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from torch_mme.runtime import processes
from torch_mme.runtime.registry import ModelRecord, Registry

log = logging.getLogger("torch_mme.runtime.watchdog")

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
        self.exited: set[str] = set()
        """Models one of whose watched processes exited since the last check."""

    def watch(self, record: ModelRecord) -> None:
        """Be told when the record's processes exit (pidfds on the running loop); polled where that fails.

        A descriptor is closed when its process exits (unloaded models' too), so none outlives its process.
        """
        record.exit_watched = False
        if not record.processes or not hasattr(os, "pidfd_open"):
            return
        loop = asyncio.get_running_loop()
        fds = []
        try:
            for process in record.processes:
                fds.append(os.pidfd_open(process.pid))
        except OSError:  # exited already, or no pidfds here: the periodic check polls this record
            for fd in fds:
                os.close(fd)
            return
        for fd in fds:
            loop.add_reader(fd, self._exited, loop, fd, record.name)
        record.exit_watched = True

    def _exited(self, loop: asyncio.AbstractEventLoop, fd: int, name: str) -> None:
        loop.remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        self.exited.add(name)

    async def run(self) -> None:
        suspects: set[str] = set()  # found dead by the last check
        while True:
            await asyncio.sleep(self.every_s)
            try:
                suspects = await self.check(suspects)
            except Exception:  # the watchdog must outlive any one failure
                log.exception("watchdog check failed")

    async def check(self, suspects: set[str]) -> set[str]:
        """Restart the models dead now and in the last check; returns the ones dead for the first time.

        Checked: the models whose processes reported an exit, the suspects, and the records not watched.
        """
        names, self.exited = self.exited | suspects, set()
        candidates = [self.registry.get(name) for name in names]
        candidates += [r for r in self.registry.records() if not r.exit_watched and r.name not in names]
        records = [r for r in candidates if r is not None and r.processes and self.registry.is_ready(r)]
        dead = await asyncio.to_thread(
            lambda: {r.name for r in records if not any(map(processes.running, r.processes))}
        )
        for name in dead & suspects:
            record = self.registry.get(name)
            if record is not None and record.processes and self.registry.is_ready(record):
                await self.restart(record)
        return dead - suspects
