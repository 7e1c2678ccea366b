"""``python -m bench --only soak``: the reliability tier's soak with churn (tests/support/soak.py), 5 minutes.

The engine and its checks are the tests' (tests/reliability/test_soak.py runs it for 1 minute in CI);
this runs it longer and writes ``soak.{json,md}``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import finish, new_result, tail, write_results
from bench.report import document, pairs, verdict
from tests.support.soak import BUDGET_MB, CLIENTS, MODEL_MB, MODELS, USS_GOAL, SoakResult, problems, run_soak


def run(quick: bool = False, out_dir: str | Path = "bench/results") -> dict[str, Any]:
    """The benchmark: 5 minutes (quick: 1 minute) after a 30 s (quick: 15 s) warm-up."""
    began = time.perf_counter()
    result = new_result("soak", quick)
    seconds, warm_up_s = (60.0, 15.0) if quick else (300.0, 30.0)
    with tempfile.TemporaryDirectory(prefix="torch-mme-soak-") as tmp:
        log_path = Path(tmp) / "serve.log"
        try:
            soak = run_soak(Path(tmp) / "models", log_path, seconds, warm_up_s)
        except Exception:
            print(tail(log_path))
            raise
    found = problems(soak)
    finish(result, began)
    result.update(soak=soak.as_dict(), problems=found, passed=not found)
    write_results(result, markdown(result, soak, found), Path(out_dir))
    return result


def markdown(result: dict[str, Any], soak: SoakResult, found: list[str]) -> str:
    served = soak.outcomes.get(200, 0)
    figures = [
        ("requests", f"{soak.requests} ({served} served, {100 * served / max(soak.requests, 1):.1f}%)"),
        ("answers lost", f"**{soak.unanswered}**"),
        ("answered twice", soak.duplicated),
        ("final answers by status", soak.outcomes),
        ("every invoke answer by status", soak.attempts),
        ("LoadModel answers", soak.loads),
        ("evictions (LRU)", soak.evictions),
        ("DELETE answers (churn)", soak.unloads),
        ("most models loaded at once", soak.max_loaded),
        (
            "USS, all unloaded: after warm-up / at end",
            f"{soak.uss_after_warm_up_mb} / {soak.uss_at_end_mb} MB "
            f"({100 * soak.uss_growth:+.2f}%, goal within {100 * USS_GOAL:.0f}%)",
        ),
    ]
    return document(
        "Soak with churn",
        result,
        f"{CLIENTS} clients, {MODELS} echo models of {MODEL_MB} MB declared each, a {BUDGET_MB} MB budget "
        f"(LRU eviction), one DELETE a second; {soak.seconds:.0f} s after a {soak.warm_up_s:.0f} s warm-up.",
        pairs(figures),
        "Result: " + verdict(not found, "; ".join(found[:5])),
    )
