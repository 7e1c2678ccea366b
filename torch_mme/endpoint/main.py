"""``torch-mme endpoint``: a local SageMaker multi-model endpoint in front of the container.

Attaches to a running container by URL (the image on port 8080, or a
``torch-mme serve``), or starts ``serve`` itself. Artifacts are extracted to
``<models root>/<name>/model``; when attaching, that folder must be the one the
container reads (the image: mounted at ``/opt/ml/models``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile

from aiohttp import web

MB = 2**20
log = logging.getLogger("torch_mme.endpoint")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("endpoint", help="a local SageMaker multi-model endpoint (TargetModel routing) for boto3")
    p.add_argument(
        "--model-store", required=True, help="a folder, or s3://bucket/prefix, holding the model.tar.gz files"
    )
    p.add_argument("--container-url", help="a running container, e.g. http://127.0.0.1:8080 (default: start serve)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--models-root", help="where artifacts are extracted (default: a temporary folder)")
    p.add_argument(
        "--container-models-root",
        default=None,
        help="the same folder as the container sees it (default /opt/ml/models when attaching by URL)",
    )
    p.add_argument("--cache-mb", type=int, default=10_240, help="disk budget for extracted artifacts (default 10 GB)")
    p.add_argument(
        "--max-wait-s",
        type=float,
        default=60.0,
        help="how long an invocation waits for its model before ModelNotReadyException (default 60)",
    )
    p.add_argument("--name", default="local", help="endpoint name used in error messages")


def run(args: argparse.Namespace) -> int:
    from torch_mme.endpoint.store import StoreError, open_store

    try:
        store = open_store(args.model_store)
    except StoreError as exc:
        print(f"torch-mme endpoint: {exc}", file=sys.stderr)
        return 2
    models_root = args.models_root or tempfile.mkdtemp(prefix="torch-mme-endpoint-")
    server = None
    if args.container_url:
        container_url, container_root = args.container_url, args.container_models_root or "/opt/ml/models"
    else:
        from torch_mme.tools.local_server import LocalServer

        server = LocalServer(models_root, log=sys.stderr)
        log.info("starting torch-mme serve for the endpoint (models root %s) ...", models_root)
        server.start()
        container_url, container_root = server.url, args.container_models_root or server.models_root
    try:
        return asyncio.run(_serve(args, store, models_root, container_url, container_root))
    finally:
        if server is not None:
            server.stop()


async def _serve(args: argparse.Namespace, store, models_root: str, container_url: str, container_root: str) -> int:
    from torch_mme.endpoint.app import make_app
    from torch_mme.endpoint.cache import DiskCache
    from torch_mme.endpoint.container import Container
    from torch_mme.endpoint.metrics import Metrics
    from torch_mme.endpoint.router import Router

    metrics = Metrics()
    container = Container(container_url)
    router = Router(
        store,
        container,
        DiskCache(models_root, args.cache_mb * MB),
        container_root,
        metrics,
        endpoint_name=args.name,
        max_wait_s=args.max_wait_s,
    )
    runner = web.AppRunner(make_app(router, metrics), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        print(f"torch-mme endpoint: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signo in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signo, stop.set)
    log.info("endpoint ready: http://%s:%d (store %s, container %s)", args.host, args.port, store.url, container_url)
    await stop.wait()
    log.info("stopping the endpoint")
    await runner.cleanup()
    await container.close()
    return 0
