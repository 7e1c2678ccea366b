"""What the front knows of the loaded models: footprint, last use, requests in flight.

Every LoadModel, UnloadModel and invoke passes through the front, so this is
the container's view of its models; MMS holds the workers. "Least recently
used" is by last invoke (a model never invoked counts from its load).

Requests in flight are counted by model name, not on the record: a request
can reach MMS while its model is still loading (before the record exists),
and an unload must wait for it too (MMS never answers a request whose
worker is stopped under it).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from handler.model_config import ModelConfig


@dataclass
class ModelRecord:
    name: str
    url: str
    estimated_bytes: int
    estimate_detail: str = ""
    target_model: str = ""
    """The ``X-Amzn-SageMaker-Target-Model`` its LoadModel carried: log lines name it."""
    config: ModelConfig = field(default_factory=ModelConfig)
    """The model's ``torch-mme.json``, as read at its LoadModel: a restart loads it the same way."""
    measured_bytes: int = 0
    processes: list = field(default_factory=list)
    """``processes.started_for`` the model, found after its load: the watchdog checks they still run."""
    exit_watched: bool = False
    """The watchdog is told when these processes exit (pidfds); otherwise it polls them."""
    last_used: float = field(default_factory=time.monotonic)
    unloading: bool = False
    """Set while an unload waits for in-flight requests: new requests are refused, not raced; not evicted."""

    @property
    def reserved_bytes(self) -> int:
        """What the model is accounted for: its estimate until measured more (declared sizes may exceed use)."""
        return max(self.estimated_bytes, self.measured_bytes)


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, ModelRecord] = {}
        self.loading: dict[str, int] = {}
        """Models being loaded now, with their estimates: admitted, not yet registered."""
        self._in_flight: Counter[str] = Counter()
        self.restarting: set[str] = set()
        """Models whose processes died, until MMS has forgotten them (then they are ``loading`` again)."""

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str) -> ModelRecord | None:
        return self._models.get(name)

    def add(self, record: ModelRecord) -> None:
        self._models[record.name] = record

    def remove(self, name: str) -> ModelRecord | None:
        return self._models.pop(name, None)

    def records(self) -> list[ModelRecord]:
        return list(self._models.values())

    def reserved_bytes(self) -> int:
        """Loaded models' reservations plus the estimates of loads in progress.

        Admission calls this from a worker thread while the event loop changes the dicts: it reads
        copies (``list()`` of a dict's values is taken at once, under the GIL).
        """
        models, loading = list(self._models.values()), list(self.loading.values())
        return sum(r.reserved_bytes for r in models) + sum(loading)

    def in_flight(self, name: str) -> int:
        return self._in_flight[name]

    def eviction_order(self) -> list[ModelRecord]:
        """Idle models, least recently used first; one serving a request or being unloaded is never a candidate."""
        idle = [r for r in self._models.values() if not self._in_flight[r.name] and not r.unloading]
        return sorted(idle, key=lambda r: r.last_used)

    @contextmanager
    def in_use(self, name: str) -> Iterator[None]:
        """Mark a request in flight (protects the model from eviction and unload) and record its use."""
        self._in_flight[name] += 1
        try:
            yield
        finally:
            self._in_flight[name] -= 1
            if not self._in_flight[name]:
                del self._in_flight[name]
            record = self._models.get(name)
            if record is not None:
                record.last_used = time.monotonic()
