"""``python -m bench [--quick] [--out bench/results]``: run the benchmarks and write their results."""

from __future__ import annotations

import argparse
import sys

from bench import serve_latency


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the serve-latency benchmark."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke size: a few seconds of measurement (< ~60 s)")
    parser.add_argument("--out", default="bench/results", help="folder for serve_latency.json/.md (bench/results)")
    args = parser.parse_args(argv)
    serve_latency.run(quick=args.quick, out_dir=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
