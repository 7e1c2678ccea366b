"""The watchdog restarts a model only when its processes are gone in two scans in a row."""

from __future__ import annotations

import asyncio
import time

from torch_mme import processes, watchdog
from torch_mme.registry import ModelRecord, Registry


def _scans(monkeypatch, registry: Registry, alive_per_scan: list[set[str]]) -> list[str]:
    restarted: list[str] = []

    async def restart(record: ModelRecord) -> None:
        restarted.append(record.name)

    scans = iter(alive_per_scan)
    monkeypatch.setattr(processes, "by_model", lambda root_pid: dict.fromkeys(next(scans), []))
    dog = watchdog.Watchdog(registry, root_pid=1, restart=restart)

    async def run() -> None:
        missing: set[str] = set()
        for _ in alive_per_scan:
            missing = await dog._scan(missing)

    asyncio.run(run())
    return restarted


def test_a_model_missing_from_two_scans_in_a_row_is_restarted_once(monkeypatch):
    registry = Registry()
    for name in ("up", "dead", "blip"):
        registry.add(ModelRecord(name, f"/m/{name}", 1))
    time.sleep(0.001)
    restarted = _scans(monkeypatch, registry, [{"up", "blip"}, {"up"}, {"up", "blip"}])
    assert restarted == ["dead"]  # 'blip' was missing once only (a process being replaced)


def test_models_being_unloaded_or_registered_during_the_scan_are_left_alone(monkeypatch):
    registry = Registry()
    registry.add(ModelRecord("leaving", "/m/leaving", 1))
    registry.get("leaving").unloading = True
    registry.add(ModelRecord("new", "/m/new", 1))
    registry.get("new").loaded_at = time.monotonic() + 60  # registered after the scans began
    assert _scans(monkeypatch, registry, [set(), set(), set()]) == []
