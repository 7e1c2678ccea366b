"""The local endpoint under Zipf traffic over many models: it must behave exactly as an LRU cache of its capacity.

A real ``torch-mme endpoint`` (starting its own ``torch-mme serve``) on a folder
store of 200 models, a memory budget that holds 4 of them, and a Zipf stream
sent through boto3 one request at a time, so the LRU order is deterministic.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.support.models import ECHO_OWN_NAME
from tests.support.traffic import lru_hits, zipf_stream
from torch_mme.endpoint.naming import model_name
from torch_mme.tools.local_server import LocalEndpoint
from torch_mme.tools.packaging import pack

MODELS, REQUESTS, CAPACITY = 200, 200, 4
# Each model declares 500 MB: with serve's own processes anywhere between 100 and 600 MB (~240-370 MB measured),
# 2700 - 100 headroom - base leaves room for exactly 4.
BUDGET = {"TORCH_MME_MEMORY_BUDGET_MB": "2700", "TORCH_MME_MEMORY_HEADROOM_MB": "100"}


def metrics(endpoint: LocalEndpoint) -> dict[str, float]:
    lines = [line.rpartition(" ") for line in endpoint.metrics().splitlines() if line and not line.startswith("#")]
    return {series: float(value) for series, _, value in lines}


def test_a_zipf_stream_over_200_models_is_served_as_an_ideal_lru_of_the_endpoints_capacity(tmp_path: Path):
    model = tmp_path / "build"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(textwrap.dedent(ECHO_OWN_NAME))
    (model / "torch-mme.json").write_text(json.dumps({"memory_mb": 500}))
    store = tmp_path / "store"
    store.mkdir()
    pack(str(model), str(tmp_path / "model.tar.gz"))
    targets = [f"zipf/m{i:03d}.tar.gz" for i in range(MODELS)]
    (store / "zipf").mkdir()
    for target in targets:
        (store / target).write_bytes((tmp_path / "model.tar.gz").read_bytes())
    stream = [targets[i] for i in zipf_stream(MODELS, REQUESTS, 1.2, 17)]

    with (
        open(tmp_path / "endpoint.log", "wb") as log,
        LocalEndpoint(str(store), str(tmp_path / "models"), env=BUDGET, log=log) as endpoint,
    ):
        client = endpoint.client()
        hits: list[bool] = []
        answers: list[tuple[int, object]] = []
        before = metrics(endpoint)
        first = before
        for target in stream:
            answer = client.invoke_endpoint(
                EndpointName="local", TargetModel=target, ContentType="application/json", Body=b"{}"
            )
            answers.append((answer["ResponseMetadata"]["HTTPStatusCode"], json.loads(answer["Body"].read())))
            after = metrics(endpoint)
            assert after["sagemaker_ModelCacheHit_count"] - before.get("sagemaker_ModelCacheHit_count", 0.0) == 1
            hits.append(after["sagemaker_ModelCacheHit_sum"] > before.get("sagemaker_ModelCacheHit_sum", 0.0))
            before = after
        final = before

    assert answers == [(200, {"model": model_name(target)}) for target in stream]
    assert not [series for series in final if series.startswith("sagemaker_InvocationErrors")]
    assert final["sagemaker_LoadedModelCount"] == CAPACITY
    misses = hits.count(False)
    loads = final["sagemaker_ModelLoadingTime_count"] - first.get("sagemaker_ModelLoadingTime_count", 0.0)
    assert loads == misses
    assert final["sagemaker_ModelDownloadingTime_count"] == len(set(stream))  # a reload comes from the disk cache
    assert final["sagemaker_ModelEvictions_total"] == misses - CAPACITY
    assert hits == lru_hits(stream, CAPACITY)
    assert 0 < misses < REQUESTS  # the stream exercised both paths
