"""PNG charts of the peers benchmark, written next to its markdown (matplotlib, no display needed).

``plot_peers(result, out_dir)`` draws, from ``bench/peers``' result: invoke latency per server (tiny and
compute-bound), throughput against clients per server, LoadModel time per server, USS per additional model
per server, and this project's endpoint figures. Returns the file names written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = ("in_process", "one_process", "mms", "torchserve", "torch_mme")
NAMES = {
    "in_process": "in-process",
    "one_process": "one-process app",
    "mms": "MMS minimal",
    "torchserve": "TorchServe",
    "torch_mme": "torch-mme",
}
COLORS = {
    "in_process": "#9e9e9e",
    "one_process": "#8c6bb1",
    "mms": "#f0a030",
    "torchserve": "#e05a4f",
    "torch_mme": "#2b7bba",
}
KINDS = {"tiny": "tiny model", "compute": "compute-bound model"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _keys(section: dict[str, Any]) -> list[str]:
    return [k for k in ORDER if k in section]


def _bars(ax, keys: list[str], values: list[float], labels: list[str]) -> None:
    xs = range(len(keys))
    ax.bar(xs, values, color=[COLORS[k] for k in keys])
    ax.set_xticks(list(xs), [NAMES[k] for k in keys], rotation=20, ha="right")
    for x, v, text in zip(xs, values, labels, strict=True):
        ax.annotate(text, (x, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")


def latency(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (kind, lat) in zip(axes, result["latency"].items(), strict=True):
        keys = _keys(lat)
        p50 = [lat[k]["p50"] / 1e3 for k in keys]
        p99 = [lat[k]["p99"] / 1e3 for k in keys]
        _bars(ax, keys, p50, [f"{v:.2f}" for v in p50])
        ax.scatter(range(len(keys)), p99, marker="_", s=300, color="black", zorder=3, label="p99")
        ax.set_title(f"{KINDS[kind]}: p50 (bars) and p99, 1 client")
        ax.set_ylabel("ms per request")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (kind, tp) in zip(axes, result["throughput"].items(), strict=True):
        for key in _keys(tp):
            clients = sorted(tp[key], key=int)
            ax.plot(
                [int(n) for n in clients],
                [tp[key][n]["rps"] for n in clients],
                marker="o",
                color=COLORS[key],
                label=NAMES[key],
                linewidth=2.5 if key == "torch_mme" else 1.5,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks([int(n) for n in clients], clients)
        ax.set_xlabel("concurrent clients (over 4 models)")
        ax.set_ylabel("requests per second")
        ax.set_title(f"{KINDS[kind]}: throughput")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped(result: dict[str, Any], path: Path, metric: Any, ylabel: str, title: str, log: bool) -> None:
    plt = _pyplot()
    loads = result["loads"]
    keys = _keys(loads)
    kinds = list(result["latency"])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(kinds)
    for i, kind in enumerate(kinds):
        xs = [x + (i - (len(kinds) - 1) / 2) * width for x in range(len(keys))]
        values = [metric(loads[k], kind) for k in keys]
        bars = ax.bar(xs, values, width, label=KINDS[kind], color=[COLORS[k] for k in keys], alpha=1.0 - 0.45 * i)
        ax.bar_label(bars, [f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(keys)), [NAMES[k] for k in keys])
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (dark: tiny, light: compute-bound)")
    if log:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def endpoint(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    e = result["endpoint"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = ["miss", "hit, boto3", "hit, raw HTTP", "direct to serve"]
    values = [e["miss_ms"]["p50"], e["hit_boto3_ms"]["p50"], e["hit_raw_http_ms"]["p50"], e["hit_direct_ms"]["p50"]]
    bars = left.bar(names, values, color=["#e05a4f", "#2b7bba", "#5aa0d8", "#9e9e9e"])
    left.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("p50, ms (log)")
    left.set_title("endpoint: cache miss vs. hit (tiny model)")
    z = e["zipf"]
    bars = right.bar(
        ["observed", "ideal LRU"], [z["hit_ratio"], z["ideal_lru_hit_ratio"]], color=["#2b7bba", "#9e9e9e"]
    )
    right.bar_label(bars, [f"{z['hit_ratio']:.3f}", f"{z['ideal_lru_hit_ratio']:.3f}"], fontsize=8)
    right.set_ylim(0, 1)
    right.set_title(f"Zipf(1.1), {z['models']} models, room for {z['capacity']}: hit ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_peers(result: dict[str, Any], out_dir: Path) -> list[str]:
    """Every chart of the peers result as ``out_dir/peers-*.png``; returns the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "peers-latency.png": lambda p: latency(result, p),
        "peers-throughput.png": lambda p: throughput(result, p),
        "peers-load.png": lambda p: _grouped(
            result, p, lambda e, k: e["load_ms"][k]["p50"], "ms (log)", "LoadModel, cold, p50", log=True
        ),
        "peers-uss.png": lambda p: _grouped(
            result, p, lambda e, k: e["uss_per_model_mib"][k], "MiB", "USS per additional model", log=False
        ),
        "peers-endpoint.png": lambda p: endpoint(result, p),
    }
    for name, draw in charts.items():
        draw(out_dir / name)
    return list(charts)
