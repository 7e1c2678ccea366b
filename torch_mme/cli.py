"""The ``torch-mme`` command: ``serve`` (the container's main process) and ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from torch_mme.endpoint import main as endpoint_main
from torch_mme.settings import Settings
from torch_mme.tools import packaging


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run MMS with the PyTorch handler in the foreground (the container's main process)"
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1; TORCH_MME_HOST; the image uses 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (default 8080; SAGEMAKER_BIND_TO_PORT)")
    p.add_argument(
        "--model-dir",
        dest="models_root",
        help="models root; LoadModel refuses a url outside it (default $SAGEMAKER_BASE_DIR/models)",
    )
    p.add_argument(
        "--workers",
        dest="workers_per_model",
        type=int,
        help="worker processes per model (default 1; SAGEMAKER_MODEL_SERVER_WORKERS)",
    )
    p.add_argument(
        "--timeout",
        dest="timeout_s",
        type=int,
        help="response timeout in seconds (default 60; SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS)",
    )
    p.add_argument("--jvm-heap", help="the MMS Java heap, e.g. 512m (default 128m; TORCH_MME_JVM_HEAP)")
    p.add_argument(
        "--max-request-mb", type=int, help="largest request body in MiB (default 6; SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    )
    p.add_argument(
        "--allow-unsafe-pickle",
        action="store_const",
        const=True,
        default=None,
        help="allow loading pickled whole modules (runs code from the file; TORCH_MME_ALLOW_UNSAFE_PICKLE)",
    )
    p.add_argument("--log-level", help="INFO, DEBUG, WARNING (TORCH_MME_LOG_LEVEL)")
    p.add_argument(
        "--evict",
        dest="eviction",
        choices=["sagemaker", "lru"],
        help="sagemaker: answer 507 and let the platform unload (default); lru: unload least-recently-used models "
        "to make room, for running outside SageMaker (TORCH_MME_EVICTION)",
    )
    p.add_argument(
        "--memory-budget-mb", type=int, help="cap on the memory the container may use (TORCH_MME_MEMORY_BUDGET_MB)"
    )
    p.add_argument(
        "--memory-headroom-mb", type=int, help="memory kept free (default 256; TORCH_MME_MEMORY_HEADROOM_MB)"
    )


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build example models, pack them into a store, serve them behind the endpoint, invoke each with boto3",
    )
    p.add_argument("--port", type=int, default=0, help="port for the demo endpoint (default: a free one)")
    p.add_argument("--workdir", help="where to write the example models (default: a temporary folder)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torch-mme", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _demo_parser(sub)
    endpoint_main.add_parser(sub)
    packaging.add_parser(sub)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "serve":
        settings = settings.with_overrides(**{k: v for k, v in vars(args).items() if k != "command"})
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s"
    )
    if args.command == "endpoint":
        return endpoint_main.run(args)
    if args.command == "package":
        return packaging.run(args)
    if args.command == "serve":
        from torch_mme.runtime.serve import serve

        if settings.models_root and not os.path.isabs(settings.models_root):
            settings = settings.with_overrides(models_root=os.path.abspath(settings.models_root))
        return serve(settings)
    from torch_mme.tools.demo import run_demo

    return run_demo(port=args.port, workdir=args.workdir)


if __name__ == "__main__":
    sys.exit(main())
