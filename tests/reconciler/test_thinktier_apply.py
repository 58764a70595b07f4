"""ThinkTier autoApply's rule (thinktier_apply.py) without a cluster: bounds, step, samples, interval, rollback,
and a closed loop over simulated rounds that converges to the recommendation within bounds.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random

from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinking_stats import recommend
from tokenbudget_api.thinktier import AutoApply, Calibration
from tokenbudget_operator.reconciler.thinktier_apply import Applied, AutoApplier, Why, from_status, step

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
CAL = Calibration(minSamples=100, percentile=95, headroomPercent=20, autoApply="Enabled", maxStepPercent=25,
                  stepInterval="1h")


def test_without_min_samples_the_declared_budget_stays() -> None:
    got = step(CAL, 8192, None, recommended=1024, samples=99, now=T0)
    assert (got.budget, got.reason, got.since) == (8192, Why.NOT_ENOUGH_SAMPLES, None)


def test_a_move_is_at_most_the_step_and_then_waits_for_the_interval() -> None:
    first = step(CAL, 8192, None, recommended=1024, samples=500, now=T0)
    assert (first.budget, first.reason, first.since) == (6144, Why.STEP_LIMITED, T0)  # 8192 - 25 %
    early = step(CAL, 8192, first, recommended=1024, samples=500, now=T0 + dt.timedelta(minutes=59))
    assert (early.budget, early.reason) == (6144, Why.WAITING)
    later = step(CAL, 8192, first, recommended=1024, samples=500, now=T0 + dt.timedelta(hours=1))
    assert later.budget == 4608


def test_bounds_default_to_1024_and_the_declared_budget() -> None:
    up = step(CAL, 4096, None, recommended=9000, samples=500, now=T0)
    assert (up.budget, up.reason) == (4096, Why.MAX_BOUND)  # applying only ever saves unless maxBudget says so
    raised = CAL.model_copy(update={"max_budget_tokens": 6144, "max_step_percent": 100})
    assert step(raised, 4096, None, recommended=9000, samples=500, now=T0).budget == 6144
    floor = CAL.model_copy(update={"min_budget_tokens": 2048, "max_step_percent": 100})
    down = step(floor, 4096, None, recommended=1024, samples=500, now=T0)
    assert (down.budget, down.reason) == (2048, Why.MIN_BOUND)


def test_disabling_rolls_back_to_the_declared_tiers() -> None:
    applier = AutoApplier()
    assert applier.update("ns/tt", AutoApply.ENABLED, {"lookup": Applied(2048, T0, Why.APPLIED)})
    assert applier.budgets("ns/tt") == {"lookup": 2048}
    assert applier.update("ns/tt", AutoApply.DISABLED, {})
    assert applier.budgets("ns/tt") == {}


def test_status_carries_the_state_across_a_restart() -> None:
    status = {"classes": [{"name": "lookup", "appliedBudgetTokens": 3072, "appliedAt": "2026-12-01T00:00:00Z",
                           "appliedReason": "StepLimited"}, {"name": "support", "budgetTokens": 8192}]}
    assert from_status(status) == {"lookup": Applied(3072, T0, "StepLimited")}


def simulate(needs: list[int], declared: int, cal: Calibration, rounds: int) -> list[int]:
    """Each round: the class's calls think min(need, budget) (thinking is capped by the budget in force), the
    operator recommends from what it saw and steps; returns the budget in force each round."""
    applied: Applied | None = None
    budgets = []
    for r in range(rounds):
        budget = applied.budget if applied else declared
        budgets.append(budget)
        hist = LogHistogram()
        for need in needs:
            hist.add(min(need, budget))
        p = hist.quantile(cal.percentile / 100)
        assert p is not None
        applied = step(cal, declared, applied, recommend(p, cal.headroom_percent), len(needs),
                       T0 + dt.timedelta(hours=r))
    return budgets


def test_the_closed_loop_converges_to_the_recommendation_within_bounds() -> None:
    rng = random.Random(7)
    needs = [int(rng.lognormvariate(7.0, 0.3)) for _ in range(400)]  # ~1100 median, spread out
    hist = LogHistogram()
    for n in needs:
        hist.add(n)
    p95 = hist.quantile(0.95)
    assert p95 is not None
    target = recommend(p95, 20)
    budgets = simulate(needs, 16384, CAL, 20)
    assert all(1024 <= b <= 16384 for b in budgets)
    assert all(abs(b - a) <= a * 25 // 100 + 256 for a, b in itertools.pairwise(budgets))
    assert budgets[-1] == target
    assert budgets.index(target) <= 10  # 16384 -> ~2000 at 25 % a step: well under a day of hourly steps
    # Started below the need, it climbs back (thinking cut at the budget still recommends budget x 1.2).
    climbing = step(CAL, 16384, Applied(1024, T0, Why.APPLIED), recommend(1024, 20), 400, T0 + dt.timedelta(hours=1))
    assert climbing.budget > 1024
