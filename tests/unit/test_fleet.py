"""The fleet simulator (torch_mme/tools/fleet.py): determinism, cold misses, LRU order, routing, errors, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from torch_mme.tools import fleet
from torch_mme.tools.fleet import Costs, Fleet, ModelTooBig, Stream, simulate, summary, zipf_stream

COSTS = Costs(
    invoke_ms=2.0,
    first_invoke_ms=10.0,
    load_fixed_ms=100.0,
    load_ms_per_mb=0.0,
    unload_ms=30.0,
    download_fixed_ms=5.0,
    download_ms_per_mb=0.0,
)


def hand_made(models: str, gap_s: float = 10.0, size_mb: float = 100.0) -> Stream:
    """One request per letter, ``gap_s`` apart (each ends before the next); model i is letter i of a-z."""
    letters = sorted(set(models))
    return Stream(
        np.arange(len(models)) * gap_s,
        np.asarray([letters.index(c) for c in models]),
        np.full(len(letters), size_mb),
        tuple(letters),
    )


def names(stream: Stream, evicted: list[list[int]]) -> list[str]:
    return ["".join(stream.names[m] for m in e) for e in evicted]


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    setup = Fleet(instance_mb=2000, workers=2)
    a = simulate(zipf_stream(100, 2000, 40, 1.1, 100, 0.5, seed=5), 2, setup, COSTS)
    b = simulate(zipf_stream(100, 2000, 40, 1.1, 100, 0.5, seed=5), 2, setup, COSTS)
    c = simulate(zipf_stream(100, 2000, 40, 1.1, 100, 0.5, seed=6), 2, setup, COSTS)
    assert a.hits == b.hits and a.instances == b.instances and a.evicted == b.evicted
    np.testing.assert_array_equal(a.latency_s, b.latency_s)
    assert a.hits != c.hits


def test_one_instance_with_room_for_all_misses_only_the_first_time():
    stream = zipf_stream(50, 3000, 20, 1.1, 100, 0.0, seed=1)
    outcome = simulate(stream, 1, Fleet(instance_mb=50 * 100), COSTS)
    distinct = len(np.unique(stream.models))
    first = {int(m): i for i, m in reversed(list(enumerate(stream.models)))}
    # a request arriving while its model's first load runs is a miss too (it waits for that load)
    assert sum(outcome.loaded) == sum(outcome.downloaded) == distinct
    assert all(outcome.loaded[i] for i in first.values())
    assert sum(len(e) for e in outcome.evicted) == 0
    assert all(outcome.hits[i] is False for i in first.values())
    assert outcome.errors == 0


def test_the_hit_ratio_does_not_fall_as_instances_are_added():
    stream = zipf_stream(300, 4000, 10, 1.0, 100, 0.5, seed=3)
    setup = Fleet(instance_mb=3000, workers=2)
    ratios = [summary(stream, simulate(stream, n, setup, COSTS))["hit_ratio"] for n in range(1, 7)]
    assert ratios == sorted(ratios)
    assert ratios[-1] > ratios[0]


def test_lru_order_on_a_hand_made_trace():
    # room for 2: c evicts b (a was used after b), then b evicts a, then a evicts c
    stream = hand_made("abacba")
    outcome = simulate(stream, 1, Fleet(instance_mb=250, workers=1, load_slots=1), COSTS)
    assert outcome.hits == [False, False, True, False, False, False]
    assert names(stream, outcome.evicted) == ["", "", "", "b", "a", "c"]
    assert outcome.downloaded == [True, True, False, True, False, False]  # b, a, c reload from the disk cache
    hit_ms, miss_ms = outcome.latency_s[2] * 1e3, outcome.latency_s[3] * 1e3
    assert hit_ms == pytest.approx(COSTS.invoke_ms)
    assert miss_ms == pytest.approx(COSTS.download_fixed_ms + COSTS.unload_ms + COSTS.load_fixed_ms + 10.0)


def test_a_model_on_another_instance_is_a_hit_there_and_a_miss_goes_where_there_is_room():
    stream = hand_made("abab")
    outcome = simulate(stream, 2, Fleet(instance_mb=100, workers=1), COSTS)
    assert outcome.hits == [False, False, True, True]
    assert outcome.instances == [0, 1, 0, 1]


def test_a_busy_model_gets_a_copy_on_another_instance_with_replication_on():
    stream = hand_made("a" * 400, gap_s=0.0015)  # 1.5 ms apart, 2 ms each on one worker: the queue grows
    without = simulate(stream, 2, Fleet(instance_mb=100, workers=1), COSTS)
    assert sum(without.loaded) == 1 and set(without.instances) == {0}
    copied = simulate(stream, 2, Fleet(instance_mb=100, workers=1, replicate_at=5), COSTS)
    assert sum(copied.loaded) == 2  # one copy, loaded once however long the queue stays
    assert set(copied.instances) == {0, 1}
    assert copied.hits.count(False) == without.hits.count(False)  # those during the first load; none wait for the copy
    assert np.nanmax(copied.latency_s) < np.nanmax(without.latency_s)


def test_requests_during_a_load_wait_for_that_one_load():
    stream = hand_made("aaa", gap_s=0.01)  # all three arrive within the 105 ms load
    outcome = simulate(stream, 1, Fleet(instance_mb=100, workers=1), COSTS)
    assert outcome.hits == [False, False, False]
    assert outcome.loaded == [True, False, False]
    done = outcome.latency_s + stream.times_s
    assert done[0] == pytest.approx((COSTS.download_fixed_ms + COSTS.load_fixed_ms + 10.0) / 1e3)
    assert list(np.diff(done)) == pytest.approx([COSTS.invoke_ms / 1e3] * 2)  # then one worker serves them in turn


def test_a_miss_with_every_model_in_use_is_refused_not_dropped():
    stream = Stream(np.array([0.0, 0.001]), np.array([0, 1]), np.array([100.0, 100.0]), ("a", "b"))
    outcome = simulate(stream, 1, Fleet(instance_mb=100, workers=1), COSTS)
    assert outcome.hits == [False, None] and outcome.errors == 1
    assert np.isnan(outcome.latency_s[1])
    assert summary(stream, outcome)["errors"] == 1


def test_a_model_bigger_than_an_instance_is_an_error():
    stream = Stream(np.array([0.0, 1.0]), np.array([0, 1]), np.array([100.0, 5000.0]), ("small", "huge"))
    with pytest.raises(ModelTooBig, match="huge of 5000 MB"):
        simulate(stream, 4, Fleet(instance_mb=4000), COSTS)


def test_the_cli_reports_a_model_too_big(capsys):
    assert fleet.main(["--models", "10", "--model-mb", "500", "--instance-mb", "400", "--warmup-s", "0"]) == 2
    assert "bigger than an instance" in capsys.readouterr().err


def test_a_trace_file_and_sizes_drive_the_cli(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,target_model\n0,a.tar.gz\n10,b.tar.gz\n20,a.tar.gz\n30,a.tar.gz\n")
    sizes = tmp_path / "sizes.csv"
    sizes.write_text("target_model,size_mb\na.tar.gz,100\nb.tar.gz,300\n")
    stream = fleet.read_trace(trace, fleet.read_sizes(sizes))
    assert stream.names == ("a.tar.gz", "b.tar.gz") and list(stream.sizes_mb) == [100.0, 300.0]
    assert list(stream.models) == [0, 1, 0, 0]
    args = ["--trace", str(trace), "--sizes", str(sizes), "--instance-mb", "300", "--instances", "1-2"]
    assert fleet.main([*args, "--warmup-s", "0", "--target-p99-ms", "10000"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 0.250 |" in out and "| 2 | 0.500 |" in out
    assert "smallest instance count meeting p99 <= 10000 ms: 1" in out


def test_parse_range_and_smallest_meeting():
    assert fleet.parse_range("1-3,6") == [1, 2, 3, 6]
    rows = [
        {"instances": 1, "p99_ms": 900.0, "errors": 0},
        {"instances": 2, "p99_ms": 400.0, "errors": 3},
        {"instances": 3, "p99_ms": 300.0, "errors": 0},
    ]
    assert fleet.smallest_meeting(rows, 500.0) == 3
    assert fleet.smallest_meeting(rows, 100.0) is None


def test_measured_costs_fall_back_to_the_defaults_without_a_result(tmp_path):
    assert fleet.Costs.measured(tmp_path / "missing.json") == fleet.Costs()


def test_the_cli_refuses_a_malformed_or_empty_trace(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,target_model\n0.0,a.tar.gz\n1.0\n")
    with pytest.raises(SystemExit):
        fleet.main(["--trace", str(bad)])
    assert "no target_model" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("time_s,target_model\n")
    with pytest.raises(SystemExit):
        fleet.main(["--trace", str(empty)])
    assert "no requests" in capsys.readouterr().err
