"""The watchdog restarts a model only when none of its processes runs, in two checks in a row."""

from __future__ import annotations

import asyncio

import psutil

from torch_mme.runtime import watchdog
from torch_mme.runtime.registry import ModelRecord, Registry, State


class FakeProcess:
    """Stands for a psutil.Process: running or not, per check."""

    def __init__(self, *running: bool) -> None:
        self.answers = list(running)

    def is_running(self) -> bool:
        return self.answers.pop(0)

    def status(self) -> str:
        return psutil.STATUS_SLEEPING


def _checks(registry: Registry, count: int) -> list[str]:
    restarted: list[str] = []

    async def restart(record: ModelRecord) -> None:
        restarted.append(record.name)

    dog = watchdog.Watchdog(registry, restart=restart)

    async def run() -> None:
        suspects: set[str] = set()
        for _ in range(count):
            suspects = await dog.check(suspects)

    asyncio.run(run())
    return restarted


def test_a_model_without_a_running_process_in_two_checks_in_a_row_is_restarted_once():
    registry = Registry()
    records = {
        "up": [FakeProcess(True, True, True)],
        "dead": [FakeProcess(False, False, False)],
        "blip": [FakeProcess(True, False, True)],  # missing once only
        "half": [FakeProcess(False, False, False), FakeProcess(True, True, True)],  # one of its two still runs
    }
    for name, found in records.items():
        registry.add(ModelRecord(name, f"/m/{name}", 1, processes=found))
    assert _checks(registry, 3) == ["dead"]


def test_models_being_unloaded_or_not_yet_noted_are_left_alone():
    registry = Registry()
    registry.add(ModelRecord("leaving", "/m/leaving", 1, processes=[FakeProcess(False, False)]))
    registry.move(registry.slot("leaving"), State.UNLOADING)
    registry.add(ModelRecord("just-loaded", "/m/just-loaded", 1))  # its processes not noted yet
    assert _checks(registry, 2) == []


def test_a_zombie_counts_as_exited():
    zombie = FakeProcess(True)
    zombie.status = lambda: psutil.STATUS_ZOMBIE
    assert not watchdog.processes.running(zombie)


def test_a_watched_process_that_exits_is_noticed_without_polling_the_others():
    import subprocess
    import sys

    registry = Registry()
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    polled: list[int] = []
    restarted: list[str] = []

    class Counted(psutil.Process):
        def is_running(self) -> bool:
            polled.append(self.pid)
            return super().is_running()

    async def restart(record: ModelRecord) -> None:
        restarted.append(record.name)

    async def run() -> None:
        dog = watchdog.Watchdog(registry, restart=restart)
        for name, process in (("victim", victim), ("survivor", survivor)):
            record = ModelRecord(name, f"/m/{name}", 1, processes=[Counted(process.pid)])
            registry.add(record)
            dog.watch(record)
            assert record.exit_watched
        suspects = await dog.check(set())
        assert suspects == set() and polled == []  # nothing exited: nothing polled
        victim.kill()
        victim.wait()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if dog.exited:
                break
        suspects = await dog.check(suspects)
        assert suspects == {"victim"}
        await dog.check(suspects)

    try:
        asyncio.run(run())
    finally:
        survivor.kill()
        survivor.wait()
    assert restarted == ["victim"]
    assert survivor.pid not in polled
