"""The fleet simulator against the real thing: one simulated instance and ``torch-mme endpoint`` + ``serve``."""

from __future__ import annotations

from tests.support.fleet_check import check_against_endpoint


def test_one_simulated_instance_hits_and_evicts_as_the_real_endpoint_does(tmp_path):
    # 20 tiny models declaring 600 MB each, a budget with room for 5, 200 sequential Zipf(1.1) requests
    result = check_against_endpoint(tmp_path, models=20, capacity=5, requests=200)
    assert result["errors"] == []
    sequences = result["sequences"]
    assert sequences["hit_real"] == sequences["hit_sim"]
    assert sequences["evicted_real"] == sequences["evicted_sim"]
    assert result["max_loaded_real"] == 5
    assert 0 < result["hit_ratio_real"] < 1  # both hits and evictions were exercised
