"""What the front knows of each model name: a small state machine per name, and the requests in flight.

Every LoadModel, UnloadModel and invoke passes through the front, so this is
the container's view of its models; MMS holds the workers. "Least recently
used" is by last invoke (a model never invoked counts from its load).

A name MMS is being told about has a ``Slot``, in one ``State``::

    (none) ──claim──▶ LOADING ──▶ READY ──▶ UNLOADING ──▶ GONE
    (none) ──claim──▶ UNLOADING (a DELETE of a name not loaded here, no record) ──▶ GONE
    LOADING ──▶ GONE (the load failed)        UNLOADING ──▶ READY (MMS kept it)
    READY ──▶ RESTARTING (its processes died) ──▶ LOADING (the same LoadModel again)

A slot is held by the one operation that claimed it or moved it to where it is
(``lifecycle``): only that operation moves it on, so two MMS operations on a
name never interleave. Anyone else who needs the name waits for the slot's
``changed`` event (set on every move) and looks again; a LoadModel of a name
that has a slot is 409. A ``GONE`` slot has left the table: the name is free.

Requests in flight are counted by model name, not on the record: a request
can reach MMS while its model is still loading (before the record exists),
and an unload must wait for it too (MMS never answers a request whose
worker is stopped under it).
"""

from __future__ import annotations

import asyncio
import enum
import time
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

    @property
    def reserved_bytes(self) -> int:
        """What the model is accounted for: its estimate until measured more (declared sizes may exceed use)."""
        return max(self.estimated_bytes, self.measured_bytes)


class State(enum.Enum):
    LOADING = "loading"
    """Admitted and being registered in MMS (or MMS clearing what a failed load left): its estimate is reserved."""
    READY = "ready"
    """Loaded: requests go to MMS; an eviction candidate when idle; watched for dead processes."""
    UNLOADING = "unloading"
    """Waiting for its requests in flight, then MMS's DELETE: new requests are refused (404), not raced."""
    RESTARTING = "restarting"
    """Its processes died: MMS is told to forget it (requests 503, its memory stays reserved), then LOADING."""
    GONE = "gone"
    """Left the table: the name is free."""


MOVES: dict[State, frozenset[State]] = {
    State.LOADING: frozenset({State.READY, State.GONE}),
    State.READY: frozenset({State.UNLOADING, State.RESTARTING}),
    State.UNLOADING: frozenset({State.READY, State.GONE}),
    State.RESTARTING: frozenset({State.LOADING, State.GONE}),
    State.GONE: frozenset(),
}
"""The moves a slot may make; ``claim`` starts one in LOADING or UNLOADING."""


class InvalidMove(RuntimeError):
    """A move the state machine does not have: a bug in the caller, never a client's doing."""


@dataclass(eq=False)
class Slot:
    """One name's place in the table: its state, its record (none for a DELETE of a name not loaded here)."""

    name: str
    state: State
    record: ModelRecord | None = None
    reserved_bytes: int = 0
    """Memory reserved while LOADING or RESTARTING (a READY or UNLOADING model counts its record's)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the slot moves (a fresh event per state): waiters then look at the table again."""


class Abandoned(Exception):
    """Set by ``Registry.abandon`` on the answer of a request waiting on MMS: its model is being restarted."""


class Flight:
    """The requests to one model name now in the front's hands (between admission and MMS's answer)."""

    __slots__ = ("count", "waiters", "idle")

    def __init__(self) -> None:
        self.count = 0
        self.waiters: set[asyncio.Future] = set()
        """The answer's future of each request waiting on MMS: ``abandon`` ends them (a restart answers them 503)."""
        self.idle: asyncio.Event | None = None
        """Made by an unload that waits for the count to reach 0; set when it does."""


class Registry:
    def __init__(self) -> None:
        self._slots: dict[str, Slot] = {}
        self._flights: dict[str, Flight] = {}

    # --- what is known ---------------------------------------------------------------------------
    def slot(self, name: str) -> Slot | None:
        return self._slots.get(name)

    def _loaded(self, slot: Slot | None) -> ModelRecord | None:
        return slot.record if slot is not None and slot.state in (State.READY, State.UNLOADING) else None

    def __contains__(self, name: str) -> bool:
        """Loaded here (ready, or being unloaded)."""
        return self._loaded(self._slots.get(name)) is not None

    def __len__(self) -> int:
        return len(self.records())

    def get(self, name: str) -> ModelRecord | None:
        """The record of a model loaded here (ready, or being unloaded); none while it loads or restarts."""
        return self._loaded(self._slots.get(name))

    def records(self) -> list[ModelRecord]:
        return [r for r in map(self._loaded, list(self._slots.values())) if r is not None]

    def is_ready(self, record: ModelRecord) -> bool:
        """This very record is loaded and not being unloaded or restarted."""
        slot = self._slots.get(record.name)
        return slot is not None and slot.record is record and slot.state is State.READY

    def loading_bytes(self) -> int:
        """The estimates reserved by loads (and restarts) in progress."""
        slots = list(self._slots.values())  # a copy: admission reads from a worker thread
        return sum(s.reserved_bytes for s in slots if s.state in (State.LOADING, State.RESTARTING))

    def reserved_bytes(self) -> int:
        """Loaded models' reservations plus the estimates of loads in progress.

        Admission calls this from a worker thread while the event loop changes the table: it reads a copy
        (``list()`` of a dict's values is taken at once, under the GIL).
        """
        total = 0
        for slot in list(self._slots.values()):
            record = self._loaded(slot)
            total += record.reserved_bytes if record is not None else slot.reserved_bytes
        return total

    def eviction_order(self) -> list[ModelRecord]:
        """Idle models, least recently used first; one serving a request, loading, restarting or being unloaded
        is never a candidate."""
        idle = [
            s.record
            for s in self._slots.values()
            if s.state is State.READY and s.record is not None and s.name not in self._flights
        ]
        return sorted(idle, key=lambda r: r.last_used)

    # --- moves -------------------------------------------------------------------------------------
    def claim(self, name: str, state: State, record: ModelRecord | None = None, reserved_bytes: int = 0) -> Slot:
        """Take a free name: LOADING (a LoadModel admitted) or UNLOADING (a DELETE of a name not loaded here)."""
        if name in self._slots:
            raise InvalidMove(f"model {name} is already {self._slots[name].state.value}")
        if state not in (State.LOADING, State.UNLOADING):
            raise InvalidMove(f"a slot starts loading or unloading, not {state.value}")
        slot = Slot(name, state, record, reserved_bytes)
        self._slots[name] = slot
        return slot

    def move(self, slot: Slot, state: State, reserved_bytes: int | None = None) -> None:
        """Move a held slot on (``MOVES``), waking whoever waits for it."""
        if state not in MOVES[slot.state] or self._slots.get(slot.name) is not slot:
            raise InvalidMove(f"model {slot.name}: {slot.state.value} -> {state.value}")
        if state is State.READY and slot.record is None:
            raise InvalidMove(f"model {slot.name} cannot be ready without a record")
        if reserved_bytes is not None:
            slot.reserved_bytes = reserved_bytes
        slot.state = state
        if state is State.GONE:
            del self._slots[slot.name]
        changed, slot.changed = slot.changed, asyncio.Event()
        changed.set()

    def release(self, slot: Slot) -> None:
        """The holder is done with the name (the slot moves to GONE); a slot already GONE stays so."""
        if slot.state is not State.GONE:
            self.move(slot, State.GONE)

    def add(self, record: ModelRecord) -> Slot:
        """A model already loaded in MMS, READY at once (a LoadModel claims LOADING first, then moves)."""
        slot = self.claim(record.name, State.LOADING, record)
        self.move(slot, State.READY)
        return slot

    async def wait_changed(self, slot: Slot, timeout: float) -> bool:
        """Wait until the slot moves; False if it did not within ``timeout`` seconds."""
        changed = slot.changed
        try:
            await asyncio.wait_for(changed.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return False
        return True

    # --- requests in flight ----------------------------------------------------------------------
    def in_flight(self, name: str) -> int:
        flight = self._flights.get(name)
        return flight.count if flight is not None else 0

    @contextmanager
    def in_use(self, name: str) -> Iterator[Flight]:
        """Mark a request in flight (protects the model from eviction and unload) and record its use."""
        flight = self._flights.get(name)
        if flight is None:
            flight = self._flights[name] = Flight()
        flight.count += 1
        try:
            yield flight
        finally:
            flight.count -= 1
            if not flight.count:
                del self._flights[name]
                if flight.idle is not None:
                    flight.idle.set()
            record = self.get(name)
            if record is not None:
                record.last_used = time.monotonic()

    async def drained(self, name: str, timeout: float) -> bool:
        """Wait until no request to ``name`` is in flight; False if some still were after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (flight := self._flights.get(name)) is not None:
            if flight.idle is None:
                flight.idle = asyncio.Event()
            try:
                await asyncio.wait_for(flight.idle.wait(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                return False
        return True

    def abandon(self, name: str) -> int:
        """End now the wait of every request to ``name`` waiting on MMS (their callers get ``Abandoned``); how
        many there were."""
        flight = self._flights.get(name)
        waiters = [w for w in flight.waiters if not w.done()] if flight is not None else []
        for waiter in waiters:
            waiter.set_exception(Abandoned(name))
        return len(waiters)
