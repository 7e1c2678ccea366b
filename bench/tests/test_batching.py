"""The pure helpers of bench/batching.py: request bytes, chunk rotation, goal checks, Prometheus histogram means."""

from __future__ import annotations

import pytest

from bench import batching


def test_raw_request_carries_types_and_length():
    raw = batching.raw_request(2345, "/models/m/invoke", b"abc", "application/x-npy", "application/json")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"abc"
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /models/m/invoke HTTP/1.1"
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"Content-Type"] == b"application/x-npy"
    assert headers[b"Accept"] == b"application/json"
    assert headers[b"Content-Length"] == b"3"
    assert headers[b"Host"] == b"127.0.0.1:2345"


def test_rotation_puts_each_key_first_in_turn():
    keys = ["a", "b", "c"]
    orders = [batching.rotation(keys, chunk) for chunk in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert batching.rotation([], 3) == []


def test_goals_pass_and_fail():
    passing = batching.goals({"mme_b16": 400.0, "mme_b1": 100.0}, {"mme_b16": 12.0, "mme_b1": 7.0}, 1.03)
    assert passing["throughput_ratio"] == {"value": 4.0, "bound": batching.THROUGHPUT_GOAL, "pass": True}
    assert passing["p50_at_1_client_ms"]["bound"] == 7.0 + batching.DELAY_MS
    assert passing["p50_at_1_client_ms"]["pass"] is True
    assert passing["metrics_p50_ratio"]["pass"] is True
    failing = batching.goals({"mme_b16": 399.0, "mme_b1": 100.0}, {"mme_b16": 12.1, "mme_b1": 7.0}, 1.031)
    assert [g["pass"] for g in failing.values()] == [False, False, False]


def test_goals_without_figures_are_not_judged():
    missing = batching.goals({}, {}, None)
    assert all(g["pass"] is None for g in missing.values())
    assert batching.ratio(1.0, 0.0) is None


def test_histogram_mean_reads_sum_over_count_of_one_model():
    text = (
        "# HELP torch_mme_model_batch_size Requests in the batch\n"
        'torch_mme_model_batch_size_bucket{le="16.0",model="a"} 10.0\n'
        'torch_mme_model_batch_size_count{model="a"} 10.0\n'
        'torch_mme_model_batch_size_sum{model="a"} 150.0\n'
        'torch_mme_model_batch_size_count{model="b"} 0.0\n'
        'torch_mme_model_batch_size_sum{model="b"} 0.0\n'
    )
    assert batching.histogram_mean(text, "torch_mme_model_batch_size", "a") == pytest.approx(15.0)
    assert batching.histogram_mean(text, "torch_mme_model_batch_size", "b") is None
    assert batching.histogram_mean(text, "torch_mme_model_batch_size", "c") is None


def test_role_names_the_part_of_a_server():
    assert batching.role("java", ["/usr/bin/java", "-cp", "x"]) == "java"
    assert batching.role("python", ["/v/bin/python", "-m", "torch_mme.cli", "serve"]) == "front"
    assert batching.role("python", ["/v/bin/python", "/x/mms/model_service_worker.py"]) == "worker"


def test_cpu_used_sums_by_role_and_counts_new_processes_whole():
    before = {1: ("java", 10.0), 2: ("worker", 5.0)}
    after = {1: ("java", 10.5), 2: ("worker", 6.0), 3: ("worker", 0.25)}
    assert batching.cpu_used(before, after) == {"java": 0.5, "worker": 1.25}


def test_round_ratios_are_the_median_of_per_round_ratios_with_their_spread():
    on = [1.10, 1.00, 1.30, 0.99, 1.02]
    off = [1.00, 1.00, 1.00, 1.00, 1.00]
    got = batching.round_ratios(on, off)
    assert got["n"] == 5
    assert got["median"] == pytest.approx(1.02)
    assert (got["p25"], got["p75"]) == (pytest.approx(1.00), pytest.approx(1.10))
    assert (got["min"], got["max"]) == (pytest.approx(0.99), pytest.approx(1.30))
    drifting = batching.round_ratios([2.0, 4.0, 8.0], [1.9, 3.8, 7.6])  # the machine slows; each round's ratio holds
    assert drifting["median"] == pytest.approx(2.0 / 1.9)
    assert batching.round_ratios([], [])["median"] is None
    assert batching.round_ratios([1.0], [0.0])["n"] == 0


def test_the_metrics_comparison_keeps_its_number_of_requests():
    """More, shorter rounds than the pooled method's 16 x 300 requests per side, about the same time in all."""
    assert batching.FULL.metrics_rounds * batching.FULL.metrics_calls == 16 * 300
    assert batching.FULL.metrics_rounds >= 40
    assert batching.QUICK.metrics_rounds * batching.QUICK.metrics_calls == 4 * 100
