"""A ``torch-mme serve`` with a ``torch-mme endpoint`` in front, boto3 invokes, and the endpoint's metrics read
back: for the fleet simulator's check (tests/support/fleet_check.py) and bench/endpoint.py."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support import tail
from tests.support.models import JSON_TYPE
from torch_mme.tools.local_server import LocalEndpoint, LocalServer

ENDPOINT_NAME = "local"


def read_metrics(endpoint: LocalEndpoint) -> dict[str, float]:
    """The endpoint's Prometheus text as ``{series: value}`` (labels kept in the series name)."""
    values: dict[str, float] = {}
    for line in endpoint.metrics().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series] = float(value)
    return values


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """The change of ``sagemaker_<name>`` between two readings (0 where the series is missing); the timing
    metrics are in microseconds, as SageMaker documents them."""
    series = f"sagemaker_{name}"
    return after.get(series, 0.0) - before.get(series, 0.0)


def invoke(client: Any, target: str, body: bytes) -> tuple[float, int, bytes]:
    """One boto3 ``invoke_endpoint``, Body read to the end; (seconds, status, body). Raises the client's errors."""
    start = time.perf_counter()
    answer = client.invoke_endpoint(
        EndpointName=ENDPOINT_NAME, TargetModel=target, ContentType=JSON_TYPE, Accept=JSON_TYPE, Body=body
    )
    data = answer["Body"].read()
    return time.perf_counter() - start, answer["ResponseMetadata"]["HTTPStatusCode"], data


@contextlib.contextmanager
def running(
    models_root: Path, store: Path, log_dir: Path, tag: str, env: dict[str, str] | None = None
) -> Iterator[tuple[LocalServer, LocalEndpoint]]:
    """A ``LocalServer`` (with ``env``) and a ``LocalEndpoint`` attached to it; both stopped whatever happens."""
    serve_log, endpoint_log = log_dir / f"serve-{tag}.log", log_dir / f"endpoint-{tag}.log"
    with open(serve_log, "wb") as slog, open(endpoint_log, "wb") as elog:
        server = LocalServer(str(models_root), env=env, log=slog)
        endpoint = LocalEndpoint(str(store), server.models_root, container_url=server.url, log=elog)
        try:
            start = time.perf_counter()
            server.start()
            print(f"  serve up on {server.url} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            yield server, endpoint
        except BaseException:
            slog.flush()
            elog.flush()
            print(f"--- serve log (last lines) ---\n{tail(serve_log)}", file=sys.stderr)
            print(f"--- endpoint log (last lines) ---\n{tail(endpoint_log)}", file=sys.stderr)
            raise
        finally:
            endpoint.stop()
            server.stop()


def start_endpoint(endpoint: LocalEndpoint) -> None:
    start = time.perf_counter()
    endpoint.start()
    print(f"  endpoint up on {endpoint.url} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
