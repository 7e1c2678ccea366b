"""The local endpoint's SageMaker-named metrics, read back with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from torch_mme.endpoint.metrics import Metrics


def parsed(metrics: Metrics) -> dict[str, dict]:
    """``{family name: {"type", "help", "samples": {(sample name, labels): value}}}``."""
    families = {}
    for family in text_string_to_metric_families(metrics.prometheus()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        families[family.name] = {"type": family.type, "help": family.documentation, "samples": samples}
    return families


def test_every_kind_parses_with_its_type_help_labels_and_values():
    metrics = Metrics()
    for hit in (1.0, 0.0, 1.0):
        metrics.observe("ModelCacheHit", hit, "team-a/m.tar.gz")
    metrics.observe("ModelLoadingTime", 1500.0, "team-a/m.tar.gz")
    metrics.count("Invocations", 3)
    metrics.count("InvocationErrors", type="ValidationError")
    metrics.count("InvocationErrors", type='odd "type"\nwith a newline')
    metrics.gauge("LoadedModelCount", 2)
    metrics.gauge("LoadedModelCount", 1)
    families = parsed(metrics)
    assert set(families) == {
        "sagemaker_ModelCacheHit",
        "sagemaker_ModelLoadingTime",
        "sagemaker_Invocations",
        "sagemaker_InvocationErrors",
        "sagemaker_LoadedModelCount",
    }
    hit = families["sagemaker_ModelCacheHit"]
    assert hit["type"] == "summary" and hit["help"].startswith("1 when the target model was already loaded")
    assert hit["samples"] == {("sagemaker_ModelCacheHit_count", ()): 3.0, ("sagemaker_ModelCacheHit_sum", ()): 2.0}
    loading = families["sagemaker_ModelLoadingTime"]
    assert "microseconds" in loading["help"] and loading["samples"][("sagemaker_ModelLoadingTime_sum", ())] == 1500.0
    assert families["sagemaker_Invocations"]["type"] == "counter"
    assert families["sagemaker_Invocations"]["samples"] == {("sagemaker_Invocations_total", ()): 3.0}
    assert families["sagemaker_InvocationErrors"]["samples"] == {
        ("sagemaker_InvocationErrors_total", (("type", "ValidationError"),)): 1.0,
        ("sagemaker_InvocationErrors_total", (("type", 'odd "type"\nwith a newline'),)): 1.0,
    }
    gauge = families["sagemaker_LoadedModelCount"]
    assert gauge["type"] == "gauge" and gauge["samples"] == {("sagemaker_LoadedModelCount", ()): 1.0}


def test_a_series_appears_once_it_has_a_value_and_value_reads_it_back():
    metrics = Metrics()
    assert parsed(metrics) == {}
    assert metrics.value("ModelEvictions") == 0.0
    metrics.count("ModelEvictions")
    metrics.count("ModelEvictions")
    metrics.count("InvocationErrors", type="ModelError")
    metrics.observe("ModelUnloadingTime", 10.0)
    metrics.gauge("LoadedModelCount", 4)
    assert metrics.value("ModelEvictions") == 2.0
    assert metrics.value("InvocationErrors", type="ModelError") == 1.0
    assert metrics.value("InvocationErrors", type="Other") == 0.0
    assert metrics.value("ModelUnloadingTime") == 1.0  # a summary's count
    assert metrics.value("LoadedModelCount") == 4.0
    assert list(parsed(metrics)) == [
        "sagemaker_InvocationErrors",
        "sagemaker_LoadedModelCount",
        "sagemaker_ModelEvictions",
        "sagemaker_ModelUnloadingTime",
    ]
