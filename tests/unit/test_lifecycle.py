"""The per-name state machine and the lifecycle on it, with MMS faked in-process (``fake_mms``).

Each race here is one the real server met (the soak, the fault tests): the fake MMS records what the
real one would have got wrong (two operations on one name at once; a model deleted under a request,
which MMS never answers), and every test asserts it recorded nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from handler import model_config
from tests.unit.fake_mms import FakeMms
from torch_mme.memory import MemoryReading
from torch_mme.runtime.admission import MB, Admission
from torch_mme.runtime.lifecycle import (
    BeingUnloaded,
    Conflict,
    Lifecycle,
    LoadFailed,
    NoRoom,
    NotFound,
    Refused,
    Restarting,
)
from torch_mme.runtime.registry import InvalidMove, ModelRecord, Registry, State
from torch_mme.settings import Settings

INVOKE = [("Content-Type", "application/json")]


def make(tmp_path: Path, budget_mb: int = 0, **settings) -> tuple[Lifecycle, FakeMms]:
    """A lifecycle on a fake MMS; memory is a fixed reading (10 GB free) and ``budget_mb`` if given."""
    settings = Settings(
        models_root=str(tmp_path),
        run_dir=str(tmp_path / "run"),
        memory_budget_mb=budget_mb,
        memory_headroom_mb=0,
        **settings,
    )
    registry = Registry()
    reading = MemoryReading(limit_bytes=20_000 * MB, used_bytes=10_000 * MB, source="host")
    admission = Admission(settings, registry, read=lambda: reading)
    admission.processes_of = lambda name: []  # no model processes here: nothing to measure or wait for
    admission.started_for = lambda name: []
    admission.measure = lambda name: 0
    admission._base_uss = lambda: 0
    mms = FakeMms(settings.run_dir)
    return Lifecycle(settings, mms, registry, admission), mms


def record(tmp_path: Path, name: str, memory_mb: int = 100) -> ModelRecord:
    """A LoadModel's record for a model folder that declares ``memory_mb``."""
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    config, text = folder / "torch-mme.json", json.dumps({"memory_mb": memory_mb})
    if not config.exists() or config.read_text() != text:  # never rewritten under a load's estimate thread
        config.write_text(text)
    return ModelRecord(name, str(folder), 0, config=model_config.read(str(folder)))


def go(test) -> None:
    """Run a test's coroutine, bounded: a wait the code gets wrong fails the test rather than hanging it."""
    asyncio.run(asyncio.wait_for(test, 30))


async def never(event: asyncio.Event, within_s: float = 0.5) -> bool:
    """True if ``event`` stays unset for ``within_s`` (long enough for the code to reach MMS if it would)."""
    try:
        await asyncio.wait_for(event.wait(), within_s)
    except asyncio.TimeoutError:
        return True
    return False


async def until(condition, turns: int = 1000) -> None:
    """Let the loop run until ``condition()`` holds (a bounded number of turns, not a clock)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# --- the state machine -----------------------------------------------------------------------------
def test_a_slot_moves_only_along_the_machine_and_wakes_its_waiters():
    registry = Registry()
    slot = registry.claim("m", State.LOADING, ModelRecord("m", "/m", MB), reserved_bytes=5 * MB)
    assert registry.get("m") is None and "m" not in registry and registry.loading_bytes() == 5 * MB
    with pytest.raises(InvalidMove):
        registry.claim("m", State.LOADING)  # the name is held
    with pytest.raises(InvalidMove):
        registry.move(slot, State.UNLOADING)  # a load ends ready or gone
    changed = slot.changed
    registry.move(slot, State.READY)
    assert changed.is_set() and not slot.changed.is_set()
    assert registry.get("m") is slot.record and len(registry) == 1 and registry.loading_bytes() == 0
    registry.move(slot, State.RESTARTING, reserved_bytes=MB)
    assert registry.get("m") is None and registry.loading_bytes() == MB  # its memory stays reserved
    with pytest.raises(InvalidMove):
        registry.move(slot, State.READY)  # a restart loads again first
    registry.move(slot, State.LOADING)
    registry.move(slot, State.READY)
    registry.move(slot, State.UNLOADING)
    assert "m" in registry and registry.eviction_order() == []  # being unloaded: never evicted
    registry.release(slot)
    assert registry.slot("m") is None and slot.state is State.GONE
    registry.release(slot)  # already gone: stays so
    with pytest.raises(InvalidMove):
        registry.move(slot, State.READY)
    with pytest.raises(InvalidMove):
        registry.claim("x", State.READY)
    with pytest.raises(InvalidMove):
        registry.move(registry.claim("y", State.UNLOADING), State.READY)  # no record: a forget, never ready


def test_requests_in_flight_are_counted_by_name_and_an_unload_waits_for_the_last():
    async def run() -> None:
        registry = Registry()
        drained = []
        with registry.in_use("m"):
            waiter = asyncio.ensure_future(registry.drained("m", 60.0))
            with registry.in_use("m"):
                assert registry.in_flight("m") == 2
            await asyncio.sleep(0)
            assert not waiter.done()
        drained.append(await waiter)
        assert drained == [True] and registry.in_flight("m") == 0
        with registry.in_use("m"):
            assert await registry.drained("m", 0.0) is False  # still one in flight: the bound answers

    go(run())


# --- load and unload -------------------------------------------------------------------------------
def test_load_then_unload(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200
        assert lifecycle.registry.slot("m").state is State.READY
        assert (await lifecycle.invoke("m", INVOKE, b"[1]")).status == 200
        assert (await lifecycle.unload("m", "UnloadModel", "request")).status == 200
        assert lifecycle.registry.slot("m") is None and mms.models == set()
        response = await lifecycle.unload("m", "UnloadModel", "request")  # not loaded: MMS's 404
        assert response.status == 404 and lifecycle.registry.slot("m") is None
        assert [c for c in mms.calls if c[1] != "/models/m/invoke"] == [
            ("POST", "/models"),
            ("DELETE", "/models/m"),
            ("DELETE", "/models/m"),
        ]
        assert mms.problems == []

    go(run())


def test_a_request_sent_while_its_model_loads_is_waited_for_by_the_unload_that_follows(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        register = mms.hold("POST", "/models")
        load = asyncio.ensure_future(lifecycle.load(record(tmp_path, "m")))
        await register.entered.wait()
        mms.models.add("m")  # MMS routes to a model whose workers are up before the register call returns
        answer = mms.hold("POST", "/models/m/invoke")
        request = asyncio.ensure_future(lifecycle.invoke("m", INVOKE, b"[1]"))
        await answer.entered.wait()
        assert lifecycle.registry.in_flight("m") == 1  # no record yet, counted all the same
        mms.models.discard("m")
        register.release.set()
        assert (await load).status == 200
        unload = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        await until(lambda: lifecycle.registry.slot("m").state is State.UNLOADING)
        with pytest.raises(BeingUnloaded):
            await lifecycle.invoke("m", INVOKE, b"[2]")  # new requests are refused meanwhile
        delete = mms.hold("DELETE", "/models/m")
        assert await never(delete.entered)  # the request is still in flight
        delete.release.set()
        answer.release.set()
        assert (await request).status == 200
        assert (await unload).status == 200
        assert mms.problems == []

    go(run())


def test_an_unload_waits_for_a_load_of_the_same_name(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        register = mms.hold("POST", "/models")
        load = asyncio.ensure_future(lifecycle.load(record(tmp_path, "m")))
        await register.entered.wait()
        unload = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        delete = mms.hold("DELETE", "/models/m")
        assert await never(delete.entered) and mms.calls == [("POST", "/models")]
        delete.release.set()
        register.release.set()
        assert (await load).status == 200
        assert (await unload).status == 200
        assert mms.calls == [("POST", "/models"), ("DELETE", "/models/m")] and mms.models == set()
        assert mms.problems == []

    go(run())


def test_a_delete_of_a_name_not_loaded_holds_the_name_so_a_load_of_it_is_409_not_deleted(tmp_path):
    """Found by the soak: the DELETE reached MMS late and unloaded the LoadModel of that name started meanwhile."""

    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        delete = mms.hold("DELETE", "/models/m")
        unload = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        await delete.entered.wait()
        with pytest.raises(Conflict):
            await lifecycle.load(record(tmp_path, "m"))
        assert lifecycle.check_serving("m") is None  # MMS answers requests to it (404)
        delete.release.set()
        assert (await unload).status == 404
        assert lifecycle.registry.slot("m") is None
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200
        assert mms.models == {"m"} and mms.problems == []

    go(run())


def test_a_second_unload_waits_for_the_first_and_answers_404_never_touching_the_model_loaded_again(tmp_path):
    """Found by the soak: the second unload went on after the first and deleted the new load of the name."""

    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200
        answer = mms.hold("POST", "/models/m/invoke")
        request = asyncio.ensure_future(lifecycle.invoke("m", INVOKE, b"[1]"))
        await answer.entered.wait()
        first = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        await until(lambda: lifecycle.registry.slot("m").state is State.UNLOADING)
        second = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        evicted = await lifecycle._evict_one("other")  # not a candidate while it is being unloaded
        assert evicted is False
        answer.release.set()
        assert (await request).status == 200
        assert (await first).status == 200
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200  # before the second looks again
        with pytest.raises(NotFound):
            await second
        assert mms.models == {"m"} and lifecycle.registry.slot("m").state is State.READY
        assert mms.calls.count(("DELETE", "/models/m")) == 1 and mms.problems == []

    go(run())


def test_an_unload_mms_refuses_leaves_the_model_ready(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200
        mms.models.discard("m")  # MMS lost it: its DELETE is 404
        assert (await lifecycle.unload("m", "UnloadModel", "request")).status == 404
        assert lifecycle.registry.slot("m").state is State.READY

    go(run())


# --- admission and eviction ------------------------------------------------------------------------
def test_sagemaker_mode_refuses_a_load_that_does_not_fit_before_mms_sees_it(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path, budget_mb=1000)
        for name in ("a", "b"):
            assert (await lifecycle.load(record(tmp_path, name, 400))).status == 200
        with pytest.raises(NoRoom, match="needs about 400 MB and 200 MB are free"):
            await lifecycle.load(record(tmp_path, "c", 400))
        assert lifecycle.registry.slot("c") is None and mms.calls.count(("POST", "/models")) == 2

    go(run())


def test_lru_mode_evicts_the_least_recently_used_idle_model_never_one_serving_a_request(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path, budget_mb=1000, eviction="lru")
        for name in ("busy", "a", "b"):
            assert (await lifecycle.load(record(tmp_path, name, 300))).status == 200
        assert (await lifecycle.invoke("a", INVOKE, b"[1]")).status == 200  # b is now the least recently used idle
        answer = mms.hold("POST", "/models/busy/invoke")
        request = asyncio.ensure_future(lifecycle.invoke("busy", INVOKE, b"[1]"))  # busy is older, but serving
        await answer.entered.wait()
        assert (await lifecycle.load(record(tmp_path, "c", 300))).status == 200
        assert mms.models == {"busy", "a", "c"}
        assert (await lifecycle.load(record(tmp_path, "d", 600))).status == 200  # a and c go; busy stays
        assert mms.models == {"busy", "d"}
        with pytest.raises(NoRoom):
            await lifecycle.load(record(tmp_path, "e", 800))  # d was unloaded trying; busy cannot be
        assert mms.models == {"busy"}
        answer.release.set()
        assert (await request).status == 200
        assert mms.problems == []

    go(run())


def test_lru_mode_retries_a_load_mms_ran_out_of_memory_for_after_an_eviction(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path, budget_mb=1000, eviction="lru")
        assert (await lifecycle.load(record(tmp_path, "other", 300))).status == 200
        mms.register_answers["tight"] = [(507, None)]
        assert (await lifecycle.load(record(tmp_path, "tight", 300))).status == 200
        assert mms.models == {"tight"}
        assert mms.calls[-4:] == [
            ("POST", "/models"),
            ("DELETE", "/models/tight"),  # MMS's half-registered model cleared
            ("DELETE", "/models/other"),
            ("POST", "/models"),
        ]

    go(run())


def test_a_failed_load_answers_the_handlers_reason_and_leaves_the_name_free(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        report = {"code": 400, "type": "ModelLoadError", "message": "model_fn raised ValueError: no weights"}
        mms.register_answers["m"] = [(507, report)]
        with pytest.raises(LoadFailed) as failed:
            await lifecycle.load(record(tmp_path, "m"))
        got = (failed.value.status, failed.value.kind, failed.value.detail)
        assert got == (507, "ModelLoadError", report["message"])
        assert mms.models == set() and lifecycle.registry.slot("m") is None
        mms.register_answers["m"] = [(500, None)]  # no report: MMS's own answer
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 500
        assert lifecycle.registry.slot("m") is None
        assert (await lifecycle.load(record(tmp_path, "m"))).status == 200

    go(run())


# --- restart ---------------------------------------------------------------------------------------
def test_a_restart_answers_waiting_requests_503_at_once_and_holds_the_name_until_loaded_again(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        model = record(tmp_path, "m")
        assert (await lifecycle.load(model)).status == 200
        dead = mms.hold("POST", "/models/m/invoke")  # the model's processes are dead: MMS would never answer
        requests = [asyncio.ensure_future(lifecycle.invoke("m", INVOKE, b"[1]")) for _ in range(3)]
        await until(lambda: lifecycle.registry.in_flight("m") == 3 and dead.count == 3)
        delete = mms.hold("DELETE", "/models/m")
        restart = asyncio.ensure_future(lifecycle.restart(model))
        await delete.entered.wait()
        for request in requests:
            with pytest.raises(Restarting):
                await request
        assert lifecycle.registry.in_flight("m") == 0
        with pytest.raises(Restarting):
            await lifecycle.invoke("m", INVOKE, b"[1]")
        with pytest.raises(Conflict):
            await lifecycle.load(record(tmp_path, "m"))
        assert lifecycle.registry.loading_bytes() == 100 * MB  # its memory stays reserved
        unload = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        del mms.holds[("POST", "/models/m/invoke")]
        delete.release.set()
        del mms.holds[("DELETE", "/models/m")]
        await restart
        assert (await unload).status == 200  # it waited for the restart, then unloaded the model
        assert [c for c in mms.calls if c[1] != "/models/m/invoke"] == [
            ("POST", "/models"),
            ("DELETE", "/models/m"),
            ("POST", "/models"),
            ("DELETE", "/models/m"),
        ]
        assert mms.models == set() and mms.problems == []

    go(run())


def test_a_restart_of_a_model_being_unloaded_is_skipped(tmp_path):
    async def run() -> None:
        lifecycle, mms = make(tmp_path)
        model = record(tmp_path, "m")
        assert (await lifecycle.load(model)).status == 200
        delete = mms.hold("DELETE", "/models/m")
        unload = asyncio.ensure_future(lifecycle.unload("m", "UnloadModel", "request"))
        await delete.entered.wait()
        await lifecycle.restart(model)
        delete.release.set()
        assert (await unload).status == 200
        assert mms.calls.count(("POST", "/models")) == 1 and mms.models == set()

    go(run())


# --- everything at once on one name ----------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_concurrent_load_unload_evict_restart_and_requests_on_one_name_never_overlap_in_mms(tmp_path, seed):
    """Random interleavings (MMS taking 0-3 loop turns a call): MMS never sees two operations on the name at
    once or a DELETE under a request, every call ends in an answer or a refusal, and at the end the front's
    view and MMS's agree."""

    async def run() -> None:
        rng = random.Random(seed)
        lifecycle, mms = make(tmp_path, budget_mb=1000, eviction="lru")

        async def one(op: str) -> None:
            mms.yields = rng.randrange(4)
            try:
                if op == "load":
                    await lifecycle.load(record(tmp_path, "m", 600))
                elif op == "load-other":
                    await lifecycle.load(record(tmp_path, "other", 600))  # evicts m when m is idle
                elif op == "unload":
                    await lifecycle.unload("m", "UnloadModel", "request")
                elif op == "invoke":
                    await lifecycle.invoke("m", INVOKE, b"[1]")
                elif op == "restart":
                    model = lifecycle.registry.get("m")
                    if model is not None:
                        await lifecycle.restart(model)
            except Refused:
                pass

        ops = [rng.choice(["load", "load-other", "unload", "invoke", "invoke", "restart"]) for _ in range(60)]
        tasks = []
        for op in ops:
            tasks.append(asyncio.ensure_future(one(op)))
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert mms.problems == []
        for name in ("m", "other"):
            slot = lifecycle.registry.slot(name)
            assert (slot is not None and slot.state is State.READY) == (name in mms.models), (name, slot)
        assert lifecycle.registry.in_flight("m") == 0

    go(run())
