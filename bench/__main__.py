"""``python -m bench [--quick] [--only NAME] [--out bench/results]``: run the benchmarks and write their results.

Without ``--only`` every benchmark but the on-request ones runs. Every result is in its own ``<name>.json``
and ``<name>.md``; after any run ``latest.md`` (the peers comparison, then an index of every result with its
date, commit and goals) is written again, next to the charts the peers benchmark draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import (
    batching,
    cold_start,
    container,
    endpoint,
    endpoint_scale,
    examples,
    fleet,
    memory,
    peers,
    revisions,
    satisfied_requirements,
    scale,
    serve_latency,
    soak,
    upstream,
)
from bench.peers import peerenv
from bench.report import bullets

BENCHMARKS = {
    "serve_latency": serve_latency.run,
    "memory": memory.run,
    "cold_start": cold_start.run,
    "endpoint": endpoint.run,
    "endpoint_scale": endpoint_scale.run,
    "fleet": fleet.run,
    "peers": peers.run,
    "batching": batching.run,
    "examples": examples.run,
    "satisfied_requirements": satisfied_requirements.run,
    "soak": soak.run,
    "upstream": upstream.run,
    "container": container.run,
    "revisions": revisions.run,
    "scale": scale.run,
}
ON_REQUEST = {"container", "revisions", "scale", "endpoint_scale"}
"""Only with --only: container builds and runs the image (~2 minutes); revisions compares with --against; scale
loads up to 1,000 models (~10 minutes, GBs of memory); endpoint_scale runs three endpoints on stores of up to
10,000 models (~10 minutes)."""


def write_latest(out_dir: Path) -> None:
    """``latest.md``: the peers comparison and an index of every result in ``out_dir``: when it was measured, at
    which commit, and its goals met. Written after every run, ``--only`` too, so it is never older than the
    results beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peers_md = out_dir / "peers.md"
    head = peers_md.read_text().rstrip("\n") if peers_md.exists() else "# benchmarks"
    index = [_index_line(path) for path in sorted(out_dir.glob("*.json"))]
    text = "\n".join([head, "", "## Every benchmark's latest result", "", *bullets([i for i in index if i]), ""])
    (out_dir / "latest.md").write_text(text)


def _index_line(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    runs = data.get("runs")
    if isinstance(runs, dict) and runs:  # one result per label (scale): the newest
        data = max(runs.values(), key=lambda run: str(run.get("date_utc", "")))
    goals = data.get("goals")
    if isinstance(goals, dict):
        met = f"; goals met: {sum(map(bool, goals.values()))} of {len(goals)}"
    elif isinstance(goals, list):
        met = f"; goals met: {sum(bool(g.get('pass')) for g in goals)} of {len(goals)}"
    else:
        met = ""
    name = f"[{path.stem}]({path.stem}.md)" if path.with_suffix(".md").exists() else path.stem
    if "date_utc" not in data:  # written by a test tier (reliability), not by a benchmark run
        return f"{name}{met}"
    wall = f", {data['wall_s']:.0f} s" if "wall_s" in data else ""
    return f"{name}: {data['date_utc']}, commit `{data.get('git_commit', '?')}`{wall}{met}"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the benchmarks (all but the on-request ones, in order), or the one named."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke size: under ~1 minute per benchmark")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run only this benchmark (default: all)")
    parser.add_argument("--out", default="bench/results", help="folder for <benchmark>.json/.md (bench/results)")
    parser.add_argument("--against", default="HEAD", help="with --only revisions: the git revision to compare with")
    parser.add_argument("--label", default="after", help="with --only scale: the name this run is stored under")
    parser.add_argument("--stages", default="", help="with --only scale: resident counts, e.g. 10,100,400,1000")
    parser.add_argument(
        "--keep-free-gib", type=float, default=6, help="with --only scale: stop loading below this much free memory"
    )
    parser.add_argument(
        "--peers-venv", type=Path, help="peers and batching: the peers' venv (default ~/.cache/torch-mme/bench-venv)"
    )
    args = parser.parse_args(argv)
    if args.peers_venv is not None:
        peerenv.VENV_DIR = args.peers_venv
    results = {}
    for name, run in BENCHMARKS.items():
        if args.only == name or (args.only is None and name not in ON_REQUEST):
            print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr)
            extra: dict[str, str] = {"against": args.against} if name == "revisions" else {}
            if name == "scale":
                extra = {"label": args.label, "stages": args.stages, "keep_free_gib": args.keep_free_gib}
            results[name] = run(quick=args.quick, out_dir=args.out, **extra)
    write_latest(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
