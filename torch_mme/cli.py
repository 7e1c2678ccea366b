"""The ``torch-mme`` command: ``serve`` (the container's main process) and ``demo``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from torch_mme.endpoint import main as endpoint_main
from torch_mme.settings import EVICTION_MODES, Settings, setting_fields, shown_default
from torch_mme.tools import packaging


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    """``serve``'s flags, one per setting that has one: the help says the setting's default and variable."""
    p = sub.add_parser(
        "serve", help="run MMS with the PyTorch handler in the foreground (the container's main process)"
    )
    for f in setting_fields():
        flag = f.metadata["flag"]
        if flag is None:
            continue
        variables = ", ".join(f.metadata["env"])
        help_text = f"{f.metadata['doc']} (default {shown_default(f)}; {variables})".replace("%", "%%")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=help_text)
        elif f.name == "eviction":
            p.add_argument(flag, dest=f.name, choices=EVICTION_MODES, help=help_text)
        else:
            kind = int if f.type in ("int", int) else float if f.type in ("float", float) else str
            p.add_argument(flag, dest=f.name, type=kind, help=help_text)


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
