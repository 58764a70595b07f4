"""`simulate -f THINKTIER.yaml`: the thinking spend and cuts a calibration would give, from a trace.

Each reasoning call of the trace (a record with `think_class`, or with reasoning tokens) counts in its
class as the sidecar measures it (`tokenbudget_api.thinking_stats.ClassStats`, the same histogram and
recommendation rule the operator puts in ThinkTier status). A class the file does not name, or a call no
ThinkTier classified, falls to the default tier, as the sidecar would put it.

With the recommended budget in place of the tier's, a call that thought more than the recommendation
would be cut to it (the provider thinks less; for Anthropic and Gemini it is not a truncation of the
answer): the report gives that share, the thinking tokens it would save, and the hold every call of the
class would reserve against token budgets (its thinking budget) before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import Field

from tokenbudget_api.common import ApiModel
from tokenbudget_api.thinking_stats import UNCLASSIFIED, ClassStats
from tokenbudget_api.thinktier import ThinkTier
from tokenbudget_api.usage import Outcome, UsageRecord, UsageSource


@dataclass(frozen=True)
class _Measured:
    """One trace record as the sidecar's measurement of it (thinking_stats.Measured)."""

    thinking_tokens: int
    truncated: bool
    thinking_only: bool
    budget_bound: bool
    estimated: bool


class ClassOutcome(ApiModel):
    """One class: what its calls thought under the tier, and what the recommendation would change."""

    name: str
    tier: str
    budget_tokens: int
    samples: int
    p50: int | None = None
    p95: int | None = None
    truncation_percent: str | None = None
    recommended_budget_tokens: int | None = Field(default=None, description="None: fewer than minSamples calls.")
    thinking_tokens: int = Field(description="Thinking the trace's calls did.")
    thinking_tokens_after: int | None = Field(default=None, description="The same calls cut at the recommendation.")
    cut_percent: str | None = Field(default=None, description="Share of calls that would think less.")


def load_tiers(path: Path) -> list[ThinkTier]:
    """Every ThinkTier in a (multi-document) YAML file."""
    return [ThinkTier.model_validate(doc) for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("kind") == "ThinkTier"]


def calibrate(tier: ThinkTier, records: list[UsageRecord]) -> list[ClassOutcome]:
    spec = tier.spec
    tiers = {t.name: t for t in spec.tiers}
    class_tier = {c.name: tiers[c.tier] for c in spec.classes or []}
    stats: dict[str, ClassStats] = {}
    thinking: dict[str, list[int]] = {}
    for rec in records:
        if rec.outcome is not Outcome.OK or (rec.think_class is None and not rec.usage.reasoning_tokens):
            continue
        name = rec.think_class if rec.think_class in class_tier else UNCLASSIFIED
        klass = stats.setdefault(name, ClassStats(name, class_tier.get(name, tiers[spec.default_tier])))
        used = rec.usage.reasoning_tokens
        klass.calls += 1
        klass.add(_Measured(used, rec.truncated, rec.truncated and used >= rec.usage.output_tokens,
                            used >= klass.budget, rec.source is UsageSource.ESTIMATED))
        thinking.setdefault(name, []).append(used)
    out = []
    for name, klass in stats.items():
        status = klass.status(spec.calibration)
        rec_budget = klass.recommendation(spec.calibration)
        spent = thinking[name]
        after = None if rec_budget is None else sum(min(u, rec_budget) for u in spent)
        cut = None if rec_budget is None else sum(u > rec_budget for u in spent)
        out.append(ClassOutcome(
            name=name, tier=klass.tier.name, budget_tokens=klass.budget, samples=klass.samples,
            p50=klass.hist.quantile(0.5), p95=klass.hist.quantile(0.95),
            truncation_percent=status["truncationPercent"] if isinstance(status["truncationPercent"], str) else None,
            recommended_budget_tokens=rec_budget, thinking_tokens=sum(spent), thinking_tokens_after=after,
            cut_percent=None if cut is None else f"{100 * cut / len(spent):.2f}"))
    return sorted(out, key=lambda c: c.name)
