"""Load with churn, 1 minute (tests/support/soak.py: what runs and is checked; `python -m bench --only soak`: 5 min)."""

from __future__ import annotations

import os

from tests.reliability.conftest import record
from tests.support import soak

SOAK_S = float(os.environ.get("TORCH_MME_SOAK_S", "60"))
WARM_UP_S = 15.0


def test_soak_with_churn_answers_every_request_once_and_gives_memory_back(tmp_path):
    result = soak.run_soak(tmp_path / "models", tmp_path / "serve.log", SOAK_S, WARM_UP_S)
    assert result.unanswered == 0, result.problems[:10]
    assert result.duplicated == 0
    assert result.problems == [], result.problems[:10]
    assert sum(result.outcomes.values()) == result.requests  # one final answer per request
    assert set(result.attempts) <= {200, *soak.ALLOWED_ERRORS}, result.attempts
    assert result.outcomes.get(200, 0) > result.requests / 2, result.outcomes  # serving, not just refusing
    assert result.evictions > 0 and result.unloads.get(200, 0) > 0, (result.evictions, result.unloads)
    assert 4 <= result.max_loaded <= 14, result.max_loaded  # the budget holds ~8 (+ loads/unloads in progress)
    assert result.uss_growth <= soak.USS_GOAL, (result.uss_after_warm_up_mb, result.uss_at_end_mb)
    record(
        "soak",
        duration_s=result.seconds,
        clients=soak.CLIENTS,
        models=soak.MODELS,
        requests=result.requests,
        served=result.outcomes.get(200, 0),
        outcomes=str(result.outcomes),
        loads=str(result.loads),
        evictions=result.evictions,
        explicit_unloads=result.unloads.get(200, 0),
        faults_injected=result.evictions + result.unloads.get(200, 0),
        answers_lost=result.unanswered,
        uss_after_warm_up_mb=result.uss_after_warm_up_mb,
        uss_at_end_mb=result.uss_at_end_mb,
        uss_growth_pct=round(100 * result.uss_growth, 2),
    )
