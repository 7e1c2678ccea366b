"""``python -m bench [--quick] [--only NAME] [--out bench/results]``: run the benchmarks and write their results."""

from __future__ import annotations

import argparse
import sys

from bench import cold_start, container, endpoint, memory, serve_latency

BENCHMARKS = {
    "serve_latency": serve_latency.run,
    "memory": memory.run,
    "cold_start": cold_start.run,
    "endpoint": endpoint.run,
    "container": container.run,
}
ON_REQUEST = {"container"}  # builds and runs the image (a container engine, ~2 minutes): only with --only


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmarks, serve latency, memory, then endpoint, or the one named."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke size: under ~1 minute per benchmark")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run only this benchmark (default: all)")
    parser.add_argument("--out", default="bench/results", help="folder for <benchmark>.json/.md (bench/results)")
    args = parser.parse_args(argv)
    for name, run in BENCHMARKS.items():
        if args.only == name or (args.only is None and name not in ON_REQUEST):
            print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr)
            run(quick=args.quick, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
