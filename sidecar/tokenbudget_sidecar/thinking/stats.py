"""Per-class figures, budget recommendations and conditions, shaped for ThinkTier status.

A class's figures cover the calls since its tier's budget last changed on this pod: observed thinking
is capped by the budget in force (censored), so figures taken under another budget would mislead.
Recommendations and conditions wait for `calibration.minSamples` calls; until then the figures are
reported but nothing is concluded from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from tokenbudget_api.thinktier import ANTHROPIC_MIN_THINKING, Authorization, Calibration, Tier
from tokenbudget_sidecar.thinking.classify import UNCLASSIFIED, Classification, CompiledThinkTier
from tokenbudget_sidecar.thinking.measure import Measurement
from tokenbudget_sidecar.thinking.sketch import LogHistogram

BUDGET_STEP = 256
"""Recommendations are multiples of this: tidy numbers that every provider's range accepts."""
MAX_BUDGET = 200_000 // BUDGET_STEP * BUDGET_STEP  # the largest multiple the ThinkTier API accepts
UNCLASSIFIED_ALERT_PERCENT = 5


def round_budget(tokens: float) -> int:
    """Round UP to a provider-valid budget: a multiple of 256, at least Anthropic's 1024, at most the API's max."""
    steps = math.ceil(max(tokens, 0) / BUDGET_STEP)
    return min(max(steps * BUDGET_STEP, ANTHROPIC_MIN_THINKING), MAX_BUDGET)


def recommend(percentile_value: int, headroom_percent: int) -> int:
    """percentile x (1 + headroom), rounded up to a valid budget (integer arithmetic: no float drift)."""
    return round_budget(-(-percentile_value * (100 + headroom_percent) // 100))


def percent(part: int, whole: int) -> str | None:
    """A share as the decimal string the API stores ("2.35"), or None with nothing to divide by."""
    if whole <= 0:
        return None
    return str((Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@dataclass
class ClassStats:
    """One class on this pod: its tier in force and what its calls did."""

    name: str
    tier: Tier
    hist: LogHistogram = field(default_factory=LogHistogram)
    calls: int = 0  # classified into this class (counted when the tier is applied)
    samples: int = 0  # measured: completed calls with thinking on
    truncations: int = 0
    thinking_only: int = 0
    budget_bound: int = 0
    estimated: int = 0
    thinking_off: int = 0  # the app switched thinking off, or its parameters could not take it
    not_measured: int = 0  # failed, refused upstream, or the client left
    authorized_uses: int = 0
    denied: int = 0  # asked for a Required tier this pod is not authorized for

    @property
    def budget(self) -> int:
        return self.tier.budget_tokens

    def add(self, m: Measurement) -> None:
        self.samples += 1
        self.hist.add(m.thinking_tokens)
        self.truncations += m.truncated
        self.thinking_only += m.thinking_only
        self.budget_bound += m.budget_bound
        self.estimated += m.estimated

    def recommendation(self, cal: Calibration) -> int | None:
        if self.samples < cal.min_samples:
            return None
        value = self.hist.quantile(cal.percentile / 100)
        return None if value is None else recommend(value, cal.headroom_percent)

    def status(self, cal: Calibration) -> dict[str, object]:
        """camelCase like ClassStatus (ClassStatus.model_validate(...) keeps its fields, drops the extras)."""
        p50 = self.hist.quantile(0.5)
        return {
            "name": self.name, "tier": self.tier.name, "budgetTokens": self.budget, "samples": self.samples,
            "p50": p50, "p95": self.hist.quantile(0.95), "p99": self.hist.quantile(0.99),
            "truncationPercent": percent(self.truncations, self.samples),
            "thinkingOnlyTruncations": self.thinking_only,
            "underUsePercent": percent(max(self.budget - p50, 0), self.budget) if p50 is not None else None,
            "recommendedBudgetTokens": self.recommendation(cal),
            # extras, not in ClassStatus:
            "calls": self.calls, "truncations": self.truncations, "budgetBoundPercent": percent(
                self.budget_bound, self.samples),
            "estimatedSamples": self.estimated, "thinkingOff": self.thinking_off, "notMeasured": self.not_measured,
            "authorizedUses": self.authorized_uses, "authorizationDenied": self.denied,
            "histogram": self.hist.wire(),
        }


def _above(part: int, whole: int, threshold_percent: int) -> bool:
    return whole > 0 and part * 100 > threshold_percent * whole


class ThinkTierStats:
    """All classes of one ThinkTier on this pod, plus the unclassified calls."""

    def __init__(self, tt: CompiledThinkTier) -> None:
        self.tt = tt
        self.calls = 0
        self.unclassified_calls = 0
        self.classes: dict[str, ClassStats] = {}
        for c in tt.classes:
            tier = tt.tiers[c.tier]
            if tier.authorization is Authorization.REQUIRED and tier.name not in tt.authorized:
                tier = tt.default  # what this pod's calls of the class will get
            self.classes[c.name] = ClassStats(c.name, tier)
        self.classes.setdefault(UNCLASSIFIED, ClassStats(UNCLASSIFIED, tt.default))

    @property
    def calibration(self) -> Calibration:
        return self.tt.spec.calibration

    def adopt(self, old: ThinkTierStats) -> None:
        """Keep figures across a policy push for classes whose tier budget did not change."""
        self.calls, self.unclassified_calls = old.calls, old.unclassified_calls
        for name, stats in self.classes.items():
            before = old.classes.get(name)
            if before is not None and before.tier.name == stats.tier.name and before.budget == stats.budget:
                self.classes[name] = before
                before.tier = stats.tier

    def on_apply(self, c: Classification) -> ClassStats | None:
        self.calls += 1
        self.unclassified_calls += not c.classified
        stats = self.classes.get(c.klass)
        if stats is not None:
            stats.calls += 1
            stats.authorized_uses += c.authorized
            stats.denied += c.denied is not None
        return stats

    def conditions(self) -> list[dict[str, str]]:
        """TruncationHigh, BudgetBound, UnderUsed, UnclassifiedHigh: type/status/reason/message.

        The operator adds lastTransitionTime and observedGeneration when it writes them.
        """
        cal = self.calibration
        ready = [s for s in self.classes.values() if s.samples >= cal.min_samples]
        out = []
        def truncated(s: ClassStats) -> tuple[int, int]:
            return s.truncations, s.samples

        def bound(s: ClassStats) -> tuple[int, int]:
            return s.budget_bound, s.samples

        def unused(s: ClassStats) -> tuple[int, int]:
            return max(s.budget - (s.hist.quantile(0.5) or 0), 0), s.budget

        checks = [
            ("TruncationHigh", "TruncationAboveThreshold", cal.truncation_alert_percent, truncated,
             "of calls truncated"),
            ("BudgetBound", "ThinkingCutAtBudget", cal.truncation_alert_percent, bound,
             "of calls thought up to their whole budget"),
            ("UnderUsed", "MedianFarBelowBudget", cal.under_use_alert_percent, unused, "of the budget unused at P50"),
        ]
        for kind, reason, threshold, share, what in checks:
            hits = [s for s in ready if _above(*share(s), threshold)]
            if not ready:
                out.append({"type": kind, "status": "Unknown", "reason": "NotEnoughSamples",
                            "message": f"no class has {cal.min_samples} samples yet"})
            elif hits:
                detail = "; ".join(f"{s.name}: {percent(*share(s))}% {what}" for s in hits)
                out.append({"type": kind, "status": "True", "reason": reason,
                            "message": f"{detail} (threshold {threshold}%)"})
            else:
                out.append({"type": kind, "status": "False", "reason": "WithinThreshold",
                            "message": f"every class with {cal.min_samples}+ samples is within {threshold}%"})
        if self.calls < cal.min_samples:
            out.append({"type": "UnclassifiedHigh", "status": "Unknown", "reason": "NotEnoughSamples",
                        "message": f"{self.calls} calls, fewer than {cal.min_samples}"})
        elif _above(self.unclassified_calls, self.calls, UNCLASSIFIED_ALERT_PERCENT):
            out.append({"type": "UnclassifiedHigh", "status": "True", "reason": "UnclassifiedAboveThreshold",
                        "message": f"{percent(self.unclassified_calls, self.calls)}% of calls matched no class "
                                   f"(threshold {UNCLASSIFIED_ALERT_PERCENT}%)"})
        else:
            out.append({"type": "UnclassifiedHigh", "status": "False", "reason": "WithinThreshold",
                        "message": f"{percent(self.unclassified_calls, self.calls)}% of calls matched no class"})
        return out

    def snapshot(self) -> dict[str, object]:
        p = self.tt.policy
        return {
            "namespace": p.namespace, "name": p.name, "generation": p.generation,
            "calls": self.calls, "unclassified": self.unclassified_calls,
            "unclassifiedPercent": percent(self.unclassified_calls, self.calls),
            "classes": [s.status(self.calibration) for s in self.classes.values()],
            "conditions": self.conditions(),
        }
