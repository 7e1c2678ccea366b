"""``torch-mme demo``: the whole multi-model flow on one machine, driven by boto3.

Builds the example models (trained in seconds on data that ships with
scikit-learn), packs each as a ``model.tar.gz`` into a local model store,
starts ``torch-mme endpoint`` (which starts ``torch-mme serve``), and calls
``invoke_endpoint(TargetModel=...)`` with boto3 for each model with its own
input type: the first call of each is a miss (download, extract, LoadModel),
the second a hit. Every answer is checked against the model run in-process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _matches(expected: Any, answer: Any) -> bool:
    if isinstance(answer, dict) and "labels" in answer:
        return answer["labels"] == expected
    return bool(np.allclose(np.asarray(answer, dtype=np.float64), np.asarray(expected), rtol=1e-4, atol=1e-4))


def run_demo(port: int = 0, workdir: str | None = None) -> int:
    try:
        from torch_mme.examples import build_examples
    except ImportError as exc:
        print(f"the demo needs scikit-learn: pip install 'torch-mme[demo]' ({exc})")
        return 2
    from torch_mme.local_server import LocalEndpoint
    from torch_mme.packaging import pack

    root = Path(workdir or tempfile.mkdtemp(prefix="torch-mme-demo-"))
    store, models_root = root / "store", root / "models"
    store.mkdir(parents=True, exist_ok=True)
    print(f"1. building example models in {root / 'build'} ...")
    started = time.perf_counter()
    examples = build_examples(root / "build")
    for example in examples:
        size = pack(str(example.model_dir), str(store / f"{example.name}.tar.gz"))
        print(f"   - {example.name}.tar.gz ({size / 1024:.0f} KiB): {example.describe}")
    print(f"   built and packed in {time.perf_counter() - started:.1f} s into the model store {store}")

    log_path = root / "endpoint.log"
    failures = 0
    with open(log_path, "wb") as log:
        endpoint = LocalEndpoint(str(store), str(models_root), log=log, port=port or None)
        print(f"2. starting torch-mme endpoint on {endpoint.url} (it starts torch-mme serve; log: {log_path}) ...")
        started = time.perf_counter()
        with endpoint:
            print(f"   ready in {time.perf_counter() - started:.1f} s")
            client = endpoint.client()
            print("3. boto3 invoke_endpoint(TargetModel=...), each model with its own input type")
            for example in examples:
                failures += _invoke_twice(client, example)
            hits = [line for line in endpoint.metrics().splitlines() if line.startswith("sagemaker_ModelCacheHit")]
            print(f"4. endpoint metrics: {', '.join(hits)}")
            print("5. stopping the endpoint and the server")
    print(
        "demo finished: every answer matches the model run in-process"
        if not failures
        else f"demo FAILED: {failures} model(s) answered wrongly; see {log_path}"
    )
    return 1 if failures else 0


def _invoke_twice(client: Any, example: Any) -> int:
    target = f"{example.name}.tar.gz"
    for attempt in ("miss: download + extract + LoadModel", "hit"):
        started = time.perf_counter()
        response = client.invoke_endpoint(
            EndpointName="demo",
            TargetModel=target,
            ContentType=example.content_type,
            Accept=example.accept,
            Body=example.sample_body,
        )
        answer = response["Body"].read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(
            f"   {target}  Content-Type: {example.content_type} -> {response['ContentType']} "
            f"in {elapsed_ms:.0f} ms ({attempt})"
        )
    text = answer.decode(errors="replace")
    print(f"     answer:   {text if len(text) < 200 else text[:200] + '...'}")
    print(f"     expected: {example.expected}")
    if not _matches(example.expected, json.loads(answer)):
        print("   ! the answer does not match")
        return 1
    return 0
