"""Per-class figures, budget recommendations and conditions, shaped for ThinkTier status.

A class's figures cover the calls since its tier's budget last changed on this pod: observed thinking
is capped by the budget in force (censored), so figures taken under another budget would mislead.
Recommendations and conditions wait for `calibration.minSamples` calls; until then the figures are
reported but nothing is concluded from them.
"""

from __future__ import annotations

from tokenbudget_api.admin import ClassReport, ReportedCondition, ThinkTierReport
from tokenbudget_api.thinking_stats import UNCLASSIFIED, ClassStats, percent
from tokenbudget_api.thinktier import Authorization, Calibration
from tokenbudget_sidecar.thinking.classify import Classification, CompiledThinkTier

UNCLASSIFIED_ALERT_PERCENT = 5


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
            else:
                tier = tt.in_force(c.name, tier)  # autoApply's budget, when the operator applies one
            self.classes[c.name] = ClassStats(c.name, tier)
        self.classes.setdefault(UNCLASSIFIED, ClassStats(UNCLASSIFIED, tt.in_force(UNCLASSIFIED, tt.default)))

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

    def report(self) -> ThinkTierReport:
        p = self.tt.policy
        return ThinkTierReport(
            namespace=p.namespace, name=p.name, generation=p.generation, calls=self.calls,
            unclassified=self.unclassified_calls, unclassified_percent=percent(self.unclassified_calls, self.calls),
            classes=[ClassReport.model_validate(s.status(self.calibration)) for s in self.classes.values()],
            conditions=[ReportedCondition.model_validate(c) for c in self.conditions()],
        )
