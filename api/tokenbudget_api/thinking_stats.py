"""Per-class thinking figures and budget recommendations: shared by the sidecar, which measures them, and
the operator, which merges every pod's figures into ThinkTier status (histograms add exactly, sketch.py).

Here rather than in the sidecar so the operator imports no sidecar internals (tests/test_layering.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Protocol

from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinktier import ANTHROPIC_MIN_THINKING, Calibration, Tier

UNCLASSIFIED = "unclassified"  # the class of calls no class matched (they get the default tier)


class Measured(Protocol):
    """What one completed call with thinking on showed (the sidecar's `measure.Measurement`)."""

    @property
    def thinking_tokens(self) -> int: ...
    @property
    def truncated(self) -> bool: ...
    @property
    def thinking_only(self) -> bool: ...
    @property
    def budget_bound(self) -> bool: ...
    @property
    def estimated(self) -> bool: ...


BUDGET_STEP = 256
"""Recommendations are multiples of this: tidy numbers that every provider's range accepts."""
MAX_BUDGET = 200_000 // BUDGET_STEP * BUDGET_STEP  # the largest multiple the ThinkTier API accepts


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

    def add(self, m: Measured) -> None:
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


__all__ = ["BUDGET_STEP", "MAX_BUDGET", "UNCLASSIFIED", "ClassStats", "Measured", "percent", "recommend",
           "round_budget"]
