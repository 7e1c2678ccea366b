"""``python -m bench --only fleet``: the fleet simulator (torch_mme/tools/fleet.py) on its documented default
scenario per instance count, plus its check against a real endpoint (tests/support/fleet_check.py).

``python -m bench.fleet ...`` is the simulator's command line (``python -m torch_mme.tools.fleet``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import finish, new_result, write_results
from bench.report import document
from bench.report import table as markdown_table
from tests.support.fleet_check import check_against_endpoint
from torch_mme.tools.fleet import (
    FULL,
    TABLE_HEAD,
    Costs,
    Fleet,
    Scenario,
    main,
    scenario_stream,
    smallest_meeting,
    sweep,
    table_row,
)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The sweep as fleet.md tabulates it."""
    return markdown_table(TABLE_HEAD, [table_row(r) for r in rows], "r" * len(TABLE_HEAD))


QUICK = Scenario(duration_s=240.0, warmup_s=80.0, instances=(1, 2, 4, 6, 8, 10, 12, 14, 16))
CHECK_FULL = {"models": 20, "capacity": 5, "requests": 400}
CHECK_QUICK = {"models": 20, "capacity": 5, "requests": 100}


def plot(rows: list[dict[str, Any]], target_p99_ms: float, path: Path) -> None:
    """p99 (log scale) and hit ratio against the number of instances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["instances"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.semilogy(ns, [r["p99_ms"] for r in rows], "o-", color="#2b7bba", label="p99")
    left.semilogy(ns, [r["p50_ms"] for r in rows], "s--", color="#9e9e9e", label="p50")
    left.axhline(target_p99_ms, color="#e05a4f", linestyle=":", label=f"target p99 {target_p99_ms:g} ms")
    left.set_xlabel("instances")
    left.set_ylabel("latency (ms)")
    left.legend(fontsize=8)
    right.plot(ns, [r["hit_ratio"] for r in rows], "o-", color="#2b7bba")
    right.set_xlabel("instances")
    right.set_ylabel("hit ratio")
    right.set_ylim(0, 1.02)
    for ax in (left, right):
        ax.set_xticks(ns)
        ax.grid(alpha=0.3)
    fig.suptitle("fleet simulation: latency and hit ratio vs instances", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    sc, c, rows, chk = result["scenario"], result["costs"], result["rows"], result["check"]
    best = result["smallest_meeting_target"]
    sizes = (
        f"{sc['model_mb']:g} MB each"
        if not sc["model_mb_sigma"]
        else (f"lognormal, median {sc['model_mb']:g} MB, sigma {sc['model_mb_sigma']:g}")
    )
    cfg = chk["config"]
    same = not chk["hit_mismatches"] and not chk["eviction_mismatches"] and not chk["errors"]
    lat = chk["latency"]

    def cell(s: dict[str, float] | None) -> str:
        return f"{s['p50_ms']:.1f} ms / {s['mean_ms']:.1f} ms (n {s['n']})" if s else "-"

    check = [
        ["hit ratio", f"**{chk['hit_ratio_real']:.3f}**", f"**{chk['hit_ratio_sim']:.3f}**", ""],
        ["requests whose hit/miss differs", len(chk["hit_mismatches"]), "", ""],
        ["requests whose evicted models differ", len(chk["eviction_mismatches"]), "", ""],
        ["evictions", chk["evictions_real"], chk["evictions_sim"], ""],
        ["most models loaded at once", chk["max_loaded_real"], cfg["capacity"], ""],
        *(
            [f"{kind} latency p50 / mean", cell(lat[f"real_{kind}"]), cell(lat[f"sim_{kind}"])]
            + [cell(lat[f"sim_this_run_costs_{kind}"])]
            for kind in ("hit", "miss")
        ),
        ["errors", len(chk["errors"]), "", ""],
    ]
    this_run, default = chk["costs_this_run"], chk["costs"]
    return document(
        "fleet: how many instances? (simulated SageMaker MME fleet, `bench/fleet.py`)",
        result,
        table(rows),
        (
            f"**Smallest fleet meeting p99 <= {sc['target_p99_ms']:g} ms: {best} instances.**"
            if best
            else f"**No fleet of {rows[0]['instances']}-{rows[-1]['instances']} instances meets p99 <= "
            f"{sc['target_p99_ms']:g} ms.**"
        ),
        "'load slots busy' is the load work (download + unloads + LoadModel) started per second over all load "
        "slots: near 100% loads queue without bound, requests wait for their model (and misses that find every "
        "instance's memory held by loads in progress are refused: 507s), and the latencies grow with the length "
        "of the run: the fleet is overloaded by misses, not by invokes. p99 stays at a miss's cost until fewer "
        "than 1% of requests miss; with room for every model the misses left are first requests for rare models "
        "(loads = downloads), which only a longer warm-up removes.",
        "![p99 and hit ratio vs instances](fleet.png)",
        f"## The check: one simulated instance vs `torch-mme endpoint` + `serve`, {cfg['requests']} requests",
        f"{cfg['models']} copies of a tiny scripted model, each declaring {cfg['declared_mb']} MB "
        f"(`torch-mme.json`); serve's budget {cfg['budget_mb']} MB (headroom {cfg['headroom_mb']} MB) holds "
        f"{cfg['capacity']}, the simulated instance {cfg['sim_instance_mb']:g} MB; Zipf({cfg['zipf']:g}) "
        f"seed {cfg['seed']}, one boto3 client, one request at a time. Real hit or miss: the endpoint's "
        "`sagemaker_ModelCacheHit` per request; real evictions: serve's model list before and after.",
        markdown_table(["figure", "real endpoint", "simulator", "simulator, this run's costs"], check),
        f"This run's costs (the endpoint's own metrics over the check): LoadModel "
        f"{this_run['load_fixed_ms']:.0f} ms, unload {this_run['unload_ms']:.0f} ms, "
        f"download {this_run['download_fixed_ms']:.1f} ms, hit {this_run['invoke_ms']:.1f} "
        f"ms at the client (the default costs: {default['load_fixed_ms']:.0f}, {default['unload_ms']:.0f}, "
        f"{default['download_fixed_ms']:.1f}, {default['invoke_ms']:.1f} ms).",
        (
            "**Request by request the same**: every hit and miss, and every unloaded model, as the simulator said."
            if same
            else "**The sequences differ** (first differing requests: "
            f"{(chk['hit_mismatches'] + chk['eviction_mismatches'])[:10]}); see `check.sequences` in fleet.json."
        ),
        "Real latencies are measured at the client (the metrics and model-list reads between requests are not "
        "timed); simulated ones are the costs above. The simulator's miss leaves out the refused LoadModel "
        "(507) before each eviction and the client's own cost.",
        f"Whole run: {result['wall_s']:.0f} s (the check {chk['wall_s']:.0f} s).",
        facts=[
            f"scenario: {sc['models']} models ({sizes}); instances of {sc['instance_mb']:g} MB for models, "
            f"{sc['workers']} invoke workers and {result['load_slots']} load slots each; Zipf({sc['zipf']:g}) "
            f"requests, Poisson arrivals at {sc['rate']:g} req/s for {sc['duration_s']:g} s, seed {sc['seed']}; "
            f"figures over the requests after the first {sc['warmup_s']:g} s (the fleet starts empty)",
            f"costs: invoke {c['invoke_ms']:.2f} ms, first invoke after a load {c['first_invoke_ms']:.1f} ms, "
            f"LoadModel {c['load_fixed_ms']:.0f} ms + {c['load_ms_per_mb']:g} ms/MB, unload {c['unload_ms']:.0f} ms, "
            f"download {c['download_fixed_ms']:.1f} ms + {c['download_ms_per_mb']:g} ms/MB; fixed parts from "
            f"{c['source']} (per-MB: ~{1000 / c['download_ms_per_mb']:.0f} MB/s download, "
            f"~{1000 / c['load_ms_per_mb']:.0f} MB/s load)",
        ],
    )


def run(quick: bool = False, out_dir: str = "bench/results") -> dict[str, Any]:
    """Simulate the default scenario per instance count, run the check, write ``fleet.{json,md,png}``."""
    sc = QUICK if quick else FULL
    began = time.perf_counter()
    result = new_result("fleet", quick)
    costs = Costs.measured()
    fleet = Fleet(instance_mb=sc.instance_mb, workers=sc.workers, load_slots=sc.workers)
    stream, warmup = scenario_stream(sc)
    print(f"fleet: {len(stream.models)} requests, instances {list(sc.instances)}", file=sys.stderr)
    rows = sweep(stream, sc.instances, fleet, costs, warmup)
    result.update(
        scenario=asdict(sc),
        load_slots=fleet.load_slots,
        costs=asdict(costs),
        rows=rows,
        smallest_meeting_target=smallest_meeting(rows, sc.target_p99_ms),
    )
    print("\n".join(table(rows)), file=sys.stderr)
    check = CHECK_QUICK if quick else CHECK_FULL
    print(f"check against the real endpoint: {check}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="torch-mme-fleet-") as tmp:
        result["check"] = check_against_endpoint(Path(tmp), costs=costs, **check)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, sc.target_p99_ms, out / "fleet.png")
    finish(result, began)
    write_results(result, markdown(result), out)
    return result


if __name__ == "__main__":
    sys.exit(main())
