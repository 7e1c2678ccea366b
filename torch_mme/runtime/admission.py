"""Admission before loading: does a model fit, and (standalone mode) what to unload so it does.

The estimate comes from the artifact, read without loading it (tensor bytes in
the zip directory or safetensors header, or a size ``torch-mme.json``
declares), plus one worker's own cost, times the workers (each loads its own copy). Free memory is what the
container really has (cgroup limit minus usage, else the host's available
memory), capped by ``TORCH_MME_MEMORY_BUDGET_MB`` when set, less the headroom.
Under a budget, each loaded model is accounted at the larger of its estimate
and its measured USS, so a model that declares more than it uses keeps its room.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from handler import model_config
from torch_mme import memory
from torch_mme.memory import Estimate, MemoryReading, read_memory
from torch_mme.runtime import processes
from torch_mme.runtime.registry import Registry
from torch_mme.settings import Settings

MB = 2**20


@dataclass(frozen=True)
class Verdict:
    fits: bool
    needed_bytes: int
    free_bytes: int
    basis: str

    def reason(self, name: str) -> str:
        return (
            f"model {name} needs about {self.needed_bytes / MB:.0f} MB and {self.free_bytes / MB:.0f} MB "
            f"are free ({self.basis})"
        )


class Admission:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        root_pid: int | None = None,
        read: Callable[[], MemoryReading] = read_memory,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.root_pid = root_pid or os.getpid()
        self.read = read

    def estimate(self, model_dir: str, workers: int | None = None) -> Estimate:
        """What the model will hold: every worker loads its own copy of the weights, so each is counted."""
        workers = workers or self.settings.workers_per_model
        one = memory.estimate(model_dir, model_config.memory_mb(model_dir), self.settings.model_overhead_mb * MB)
        return Estimate(workers * one.bytes, one.detail if workers == 1 else f"{one.detail}; {workers} workers")

    def check(self, needed_bytes: int) -> Verdict:
        """Whether ``needed_bytes`` more fit now, keeping the headroom."""
        loading = self.registry.loading_bytes()  # from a copy: the event loop changes the table meanwhile
        try:
            reading = self.read()
            free = reading.available_bytes - loading
            basis = f"{reading.source}: {reading.available_bytes / MB:.0f} MB available"
        except OSError:  # neither a cgroup nor /proc/meminfo (not Linux): only a budget can refuse
            free, basis = 2**62, "memory not readable on this system"
        if self.settings.memory_budget_mb:
            used = self._base_uss() + self.registry.reserved_bytes()
            budget_free = self.settings.memory_budget_mb * MB - used
            if budget_free < free:
                free = budget_free
                basis = f"budget {self.settings.memory_budget_mb} MB, {used / MB:.0f} MB in use or reserved"
        free -= self.settings.memory_headroom_mb * MB
        return Verdict(
            needed_bytes <= free, needed_bytes, max(free, 0), f"{basis}, {self.settings.memory_headroom_mb} MB headroom"
        )

    def measure(self, name: str) -> int:
        """USS of the model's processes now."""
        return processes.uss(self.processes_of(name))

    def processes_of(self, name: str) -> list:
        """The model's processes (launcher, server, workers): from the template's record, not a scan."""
        return processes.family(self.settings.run_dir, self.root_pid, name)

    def started_for(self, name: str) -> list:
        """The processes started for the model (``processes.started_for``), from the template's record."""
        return processes.started(self.settings.run_dir, self.root_pid, name)

    def _base_uss(self) -> int:
        """USS of serve and its own children that serve no model (Java, the template): known pids, no scan."""
        return processes.uss(processes.base(self.root_pid))
