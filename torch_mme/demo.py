"""``torch-mme demo``: real models, one server, each model invoked with its own input type.

Builds the example models (trained in seconds on data that ships with
scikit-learn), starts ``torch-mme serve`` on 127.0.0.1, loads each with
LoadModel as SageMaker would, invokes each with its own content type, checks
every answer against the same model run in-process, and stops the server.
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
    from torch_mme.local_server import LocalServer

    root = Path(workdir or tempfile.mkdtemp(prefix="torch-mme-demo-"))
    models_root = root / "models"
    print(f"1. building example models in {models_root} ...")
    started = time.perf_counter()
    examples = build_examples(models_root)
    print(f"   {len(examples)} models in {time.perf_counter() - started:.1f} s")
    for example in examples:
        print(f"   - {example.name}: {example.describe}")

    log_path = root / "serve.log"
    failures = 0
    with open(log_path, "wb") as log:
        server = LocalServer(str(models_root), port=port or None, log=log)
        print(f"2. starting torch-mme serve on {server.url} (log: {log_path}) ...")
        started = time.perf_counter()
        with server:
            print(f"   ready in {time.perf_counter() - started:.1f} s")
            print("3. LoadModel, then invoke each model with its own input type")
            for example in examples:
                failures += _load_and_invoke(server, example)
            print("4. stopping the server")
    print(
        "demo finished: every answer matches the model run in-process"
        if not failures
        else f"demo FAILED: {failures} model(s) answered wrongly; see {log_path}"
    )
    return 1 if failures else 0


def _load_and_invoke(server: Any, example: Any) -> int:
    started = time.perf_counter()
    status, body = server.load(example.name, str(example.model_dir))
    print(f"   POST /models {example.name} -> {status} in {time.perf_counter() - started:.2f} s")
    if status != 200:
        print(f"   ! load failed: {body}")
        return 1
    started = time.perf_counter()
    status, content_type, answer = server.invoke(
        example.name, example.sample_body, example.content_type, example.accept
    )
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(
        f"   POST /models/{example.name}/invoke  Content-Type: {example.content_type} "
        f"-> {status} {content_type} in {elapsed_ms:.1f} ms"
    )
    text = answer.decode(errors="replace")
    print(f"     answer:   {text if len(text) < 300 else text[:300] + '...'}")
    print(f"     expected: {example.expected}")
    if status != 200 or not _matches(example.expected, json.loads(answer)):
        print("   ! the answer does not match")
        return 1
    return 0
