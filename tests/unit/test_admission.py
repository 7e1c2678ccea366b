"""Admission arithmetic and the registry's LRU order, with a fake memory reading (no server)."""

from __future__ import annotations

import json
import os

from torch_mme.memory import MemoryReading
from torch_mme.runtime.admission import MB, Admission
from torch_mme.runtime.registry import ModelRecord, Registry, State
from torch_mme.settings import Settings


def reading(available_mb: int) -> MemoryReading:
    return MemoryReading(limit_bytes=24_000 * MB, used_bytes=(24_000 - available_mb) * MB, source="host")


def admission(available_mb: int = 10_000, registry: Registry | None = None, **settings) -> Admission:
    return Admission(
        Settings(**settings),
        registry if registry is not None else Registry(),
        root_pid=os.getpid(),
        read=lambda: reading(available_mb),
    )


def test_a_load_fits_when_the_estimate_is_below_free_memory_less_headroom():
    check = admission(available_mb=1000, memory_headroom_mb=200)
    assert check.check(800 * MB).fits
    verdict = check.check(801 * MB)
    assert not verdict.fits and "needs about 801 MB and 800 MB are free" in verdict.reason("m")


def test_loads_in_progress_count_against_free_memory():
    registry = Registry()
    registry.claim("other", State.LOADING, reserved_bytes=600 * MB)
    assert not admission(1000, registry, memory_headroom_mb=0).check(500 * MB).fits


def test_under_a_budget_loaded_models_count_at_the_larger_of_estimate_and_measured():
    registry = Registry()
    registry.add(ModelRecord("declared-big", "/m/a", estimated_bytes=700 * MB, measured_bytes=150 * MB))
    registry.add(ModelRecord("grew", "/m/b", estimated_bytes=100 * MB, measured_bytes=300 * MB))
    check = admission(10_000, registry, memory_budget_mb=2000, memory_headroom_mb=0)
    check._base_uss = lambda: 300 * MB  # the server's own USS (this process's moves between two reads)
    verdict = check.check(1 * MB)
    assert verdict.free_bytes == 2000 * MB - 300 * MB - 1000 * MB
    assert "budget 2000 MB" in verdict.basis


def test_the_estimate_counts_the_overhead_and_the_weights_once_per_worker(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * (10 * MB))
    estimate = admission(workers_per_model=2, worker_overhead_mb=100).estimate(str(tmp_path))
    assert estimate.bytes == 2 * (100 * MB + int(10 * MB * 1.2))  # each MMS worker loads its own copy
    assert "2 workers" in estimate.detail
    assert admission(worker_overhead_mb=100).estimate(str(tmp_path), workers=3).bytes == 3 * 112 * MB
    (tmp_path / "torch-mme.json").write_text(json.dumps({"memory_mb": 900}))
    assert admission().estimate(str(tmp_path)).bytes == 900 * MB
    assert admission().estimate(str(tmp_path), workers=2).bytes == 1800 * MB  # memory_mb is per worker


def test_eviction_order_is_least_recently_used_first_and_skips_busy_models():
    registry = Registry()
    for name, last_used in (("recent", 30.0), ("oldest", 10.0), ("middle", 20.0)):
        registry.add(ModelRecord(name, f"/m/{name}", MB, last_used=last_used))
    assert [r.name for r in registry.eviction_order()] == ["oldest", "middle", "recent"]
    with registry.in_use("oldest"):
        assert [r.name for r in registry.eviction_order()] == ["middle", "recent"]
    assert registry.get("oldest").last_used > 30.0  # a finished request makes it the most recent
    assert [r.name for r in registry.eviction_order()] == ["middle", "recent", "oldest"]


def test_requests_in_flight_count_by_name_even_before_the_model_is_registered():
    """A request can reach MMS while its model is still loading: the unload that follows must wait for it."""
    registry = Registry()
    with registry.in_use("loading"):
        registry.add(ModelRecord("loading", "/m/loading", MB, last_used=1.0))
        assert registry.in_flight("loading") == 1
        assert registry.eviction_order() == []
    assert registry.in_flight("loading") == 0
    assert [r.name for r in registry.eviction_order()] == ["loading"]


def test_a_model_being_unloaded_is_never_an_eviction_candidate():
    registry = Registry()
    registry.add(ModelRecord("a", "/m/a", MB, last_used=1.0))
    registry.add(ModelRecord("b", "/m/b", MB, last_used=2.0))
    registry.move(registry.slot("a"), State.UNLOADING)
    assert [r.name for r in registry.eviction_order()] == ["b"]
