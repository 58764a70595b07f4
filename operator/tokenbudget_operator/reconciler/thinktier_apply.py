"""ThinkTier autoApply: each class's recommended budget, applied in the cluster without writing spec.

Why not write spec: a GitOps tool would see drift and revert it. Instead the operator keeps, per class, an
*applied* budget that goes into the sidecars' effective policy (`ThinkTierPolicy.appliedBudgets`); the
spec stays as written, and status shows the declared budget, the applied one and why. Rolling back is
removing the flag: with autoApply Disabled nothing is applied and the declared tiers are in force again.

The rule, per class, each ThinkTier round (`step`):

1. Figures count only calls measured under the budget in force (thinktier_status.merge_class), so after a
   move the class needs `minSamples` new calls before it moves again (NotEnoughSamples).
2. The target is the recommendation (percentile x headroom, as the sidecar computes it) bounded by
   `minBudgetTokens` (default 1024) and `maxBudgetTokens` (default: the tier's declared budget, so applying
   only ever saves unless the spec raises the ceiling).
3. A move is at most `maxStepPercent` of the current budget, at most once per `stepInterval`; results are
   rounded up to a provider-valid budget (a multiple of 256).

Thinking seen under a budget is capped by it, so a budget below a class's need reports its percentile at
the budget and the recommendation (budget x headroom) climbs back by the headroom per step: the loop moves
down while a class under-uses its budget and up while it is cut, and rests where P·(1+h) lands.

The state survives an operator restart through status (`appliedBudgetTokens`, `appliedAt`), which the
ThinkTier index reads back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenbudget_api.thinking_stats import round_budget
from tokenbudget_api.thinktier import ANTHROPIC_MIN_THINKING, AutoApply, Calibration


class Why:
    APPLIED = "Applied"  # moved to the (bounded) recommendation
    AT_RECOMMENDATION = "AtRecommendation"  # already there
    STEP_LIMITED = "StepLimited"  # moved maxStepPercent toward it
    MIN_BOUND = "BoundedByMinBudget"
    MAX_BOUND = "BoundedByMaxBudget"
    NOT_ENOUGH_SAMPLES = "NotEnoughSamples"
    WAITING = "WaitingForStepInterval"


@dataclass(frozen=True)
class Applied:
    """One class's applied budget, since when it holds, and why it is what it is."""

    budget: int
    since: dt.datetime | None
    reason: str

    def wire(self) -> dict[str, Any]:
        from tokenbudget_operator.reconciler.conditions import k8s_time

        out: dict[str, Any] = {"appliedBudgetTokens": self.budget, "appliedReason": self.reason}
        if self.since is not None:
            out["appliedAt"] = k8s_time(self.since)
        return out


def bounds(cal: Calibration, declared: int) -> tuple[int, int]:
    low = cal.min_budget_tokens or ANTHROPIC_MIN_THINKING
    high = cal.max_budget_tokens or declared
    return low, max(high, low)


def step(cal: Calibration, declared: int, before: Applied | None, recommended: int | None, samples: int,
         now: dt.datetime) -> Applied:
    """The class's applied budget after one round (see the module docstring for the rule)."""
    low, high = bounds(cal, declared)
    current = before.budget if before is not None else min(max(declared, low), high)
    since = before.since if before is not None else None
    if recommended is None or samples < cal.min_samples:
        return Applied(current, since, Why.NOT_ENOUGH_SAMPLES)
    target = min(max(recommended, low), high)
    bounded = Why.MIN_BOUND if recommended < low else Why.MAX_BOUND if recommended > high else None
    if target == current:
        return Applied(current, since, bounded or Why.AT_RECOMMENDATION)
    if since is not None and (now - since).total_seconds() < cal.step_seconds:
        return Applied(current, since, Why.WAITING)
    room = current * cal.max_step_percent // 100
    moved = min(max(target, current - room), current + room)
    budget = min(max(round_budget(moved), low), high)
    if budget == current:  # rounding ate a step smaller than 256 tokens: take the target itself
        budget = target
    reason = bounded or (Why.APPLIED if budget == target else Why.STEP_LIMITED)
    return Applied(budget, now, reason)


class AutoApplier:
    """Per ThinkTier key, per class: the applied budgets the effective policies carry."""

    def __init__(self) -> None:
        self.tiers: dict[str, dict[str, Applied]] = {}

    def seed(self, key: str, classes: Mapping[str, Applied]) -> None:
        """Take what status says was applied (after a restart), unless this replica already knows better."""
        if key not in self.tiers and classes:
            self.tiers[key] = dict(classes)

    def budgets(self, key: str) -> dict[str, int]:
        return {name: a.budget for name, a in self.tiers.get(key, {}).items()}

    def update(self, key: str, auto_apply: AutoApply, classes: Mapping[str, Applied]) -> bool:
        """Record this round's result; True when a budget the sidecars must get changed."""
        before = self.budgets(key)
        if auto_apply is AutoApply.ENABLED:
            self.tiers[key] = dict(classes)
        else:
            self.tiers.pop(key, None)
        return self.budgets(key) != before

    def retain(self, keys: set[str]) -> None:
        for key in set(self.tiers) - keys:
            del self.tiers[key]


def from_status(status: Mapping[str, Any] | None) -> dict[str, Applied]:
    """The applied budgets a ThinkTier's stored status records (the index reads them at start-up)."""
    out: dict[str, Applied] = {}
    for c in (status or {}).get("classes") or []:
        budget = c.get("appliedBudgetTokens") if isinstance(c, Mapping) else None
        if isinstance(budget, int):
            at = c.get("appliedAt")
            since = dt.datetime.fromisoformat(str(at).replace("Z", "+00:00")) if at else None
            out[str(c.get("name"))] = Applied(budget, since, str(c.get("appliedReason") or Why.APPLIED))
    return out


__all__ = ["Applied", "AutoApplier", "Why", "bounds", "from_status", "step"]
