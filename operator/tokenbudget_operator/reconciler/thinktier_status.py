"""ThinkTier status: every selected sidecar's per-class thinking figures, merged, as one status.

Each sidecar serves `GET /thinking`: per ThinkTier and class, counters (samples, truncations, thinking-only
truncations), the budget the class ran under, and its log-histogram of thinking tokens. Histograms merge
exactly by adding bucket counts, so the merged P50/P95/P99 are what one sidecar that had seen every call
would report (within the sketch's 1 %). The sketch and the recommendation rule are the ones the sidecar
uses (`tokenbudget_api.sketch` / `.thinking_stats`), so a recommendation here is computed exactly as a
sidecar would.

Counters are cumulative per sidecar process (and per class budget: the sidecar restarts a class's figures
when its tier's budget changes, since thinking capped at another budget would mislead). So per pod and
class the tracker keeps:

- `current`: the last series the sidecar reported;
- `retired`: earlier series of the same pod under the same tier and budget, kept after a restart.

A report that does not continue `current` (a counter, the histogram's count or any bucket went down, or the
tier/budget changed) starts a new series: under the same budget the old one is retired (added to what the
pod contributes), under another budget it is dropped. A restart that re-accumulated more calls than before
between two pulls cannot be told from growth by counts alone (the sidecar has no boot id in /thinking): its
earlier series is then lost, never double counted.

Pods: a pod's last contribution stays while the pod object exists and the ThinkTier selects it (an
unreachable sidecar keeps its last figures: the calls happened); it is dropped once the pod leaves the
index (deleted, or Succeeded/Failed) or stops matching the selector. Figures are therefore "calls made by
the pods selected now, since their sidecars started", not a lifetime total of the ThinkTier.

Per class, status counts only figures gathered under the tier and budget the spec gives the class now
(the default tier for `unclassified`): pods still on an older generation, or not authorized for a Required
tier (they run the class on the default tier), are left out of that class.

Ready is False with the first misconfiguration's reason: the problems the reconciler gathered from the
selected pods' resolved policies (OverlappingThinkTiers, TierAboveOutputCap) and, from the spec alone and
so even with no pod selected, TierAboveProviderMax (`tier_checks.py`).

`calibration.autoApply: Enabled` never writes spec (GitOps tools would see drift and fight the operator):
the recommendation is applied to the sidecars' policy instead (thinktier_apply.py). Each class's figures
then count under the applied budget, and status adds the declared budget, the applied one and why, with a
condition `AutoApplied`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenbudget_api.admin import ClassReport, ThinkingAnswer, ThinkTierReport
from tokenbudget_api.common import ConditionStatus
from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinking_stats import UNCLASSIFIED, ClassStats, percent
from tokenbudget_api.thinktier import AutoApply, Calibration, Tier
from tokenbudget_operator.reconciler.conditions import (
    ConditionType,
    DesiredCondition,
    Problem,
    Reason,
    build_conditions,
    synced_condition,
    synced_counts,
)
from tokenbudget_operator.reconciler.thinktier_apply import Applied, step
from tokenbudget_operator.reconciler.tier_checks import tier_spec_problems
from tokenbudget_operator.reconciler.views import TierView

CLASS_STATUS_FIELDS = ("name", "tier", "budgetTokens", "samples", "p50", "p95", "p99", "truncationPercent",
                       "thinkingOnlyTruncations", "underUsePercent", "recommendedBudgetTokens")


@dataclass
class ClassSeries:
    """One class's figures on one sidecar, cumulative since the series began."""

    tier: str
    budget: int
    samples: int = 0
    truncations: int = 0
    thinking_only: int = 0
    hist: LogHistogram = field(default_factory=LogHistogram)

    @property
    def key(self) -> tuple[str, int]:
        return self.tier, self.budget

    @classmethod
    def from_report(cls, data: ClassReport) -> ClassSeries:
        return cls(tier=data.tier, budget=data.budget_tokens, samples=data.samples, truncations=data.truncations,
                   thinking_only=data.thinking_only_truncations or 0,
                   hist=LogHistogram.from_wire(data.histogram.dump()))

    def continues(self, before: ClassSeries) -> bool:
        """Whether this report extends `before` (same budget, no counter or bucket went down)."""
        if self.key != before.key or self.hist.gamma != before.hist.gamma:
            return False
        if (self.samples < before.samples or self.truncations < before.truncations
                or self.thinking_only < before.thinking_only or self.hist.count < before.hist.count
                or self.hist.zeros < before.hist.zeros):
            return False
        return all(self.hist.buckets.get(k, 0) >= n for k, n in before.hist.buckets.items())

    def plus(self, other: ClassSeries) -> ClassSeries:
        hist = LogHistogram(self.hist.relative_accuracy)
        hist.merge(self.hist)
        hist.merge(other.hist)
        return ClassSeries(self.tier, self.budget, self.samples + other.samples,
                           self.truncations + other.truncations, self.thinking_only + other.thinking_only, hist)


@dataclass
class ClassTrack:
    """One class on one pod: the series reported last and the earlier series kept after a restart."""

    current: ClassSeries
    retired: ClassSeries | None = None

    def observe(self, new: ClassSeries) -> None:
        if not new.continues(self.current):
            if new.key == self.current.key:  # same budget: the sidecar restarted, keep what it had seen
                self.retired = self.current if self.retired is None else self.retired.plus(self.current)
            else:  # the class's budget changed: figures under the old one no longer describe it
                self.retired = None
        self.current = new

    def total(self) -> ClassSeries:
        return self.current if self.retired is None else self.retired.plus(self.current)


@dataclass
class PodTrack:
    """One ThinkTier on one pod: calls and unclassified calls, and each class's track."""

    calls: int = 0
    unclassified: int = 0
    retired_calls: int = 0
    retired_unclassified: int = 0
    classes: dict[str, ClassTrack] = field(default_factory=dict)

    def observe(self, tt: ThinkTierReport) -> None:
        calls, unclassified = tt.calls, tt.unclassified
        if calls < self.calls or unclassified < self.unclassified:  # a restart: a new series
            self.retired_calls += self.calls
            self.retired_unclassified += self.unclassified
        self.calls, self.unclassified = calls, unclassified
        for c in tt.classes:
            series = ClassSeries.from_report(c)
            track = self.classes.get(c.name)
            if track is None:
                self.classes[c.name] = ClassTrack(series)
            else:
                track.observe(series)

    @property
    def total_calls(self) -> int:
        return self.retired_calls + self.calls

    @property
    def total_unclassified(self) -> int:
        return self.retired_unclassified + self.unclassified


class ThinkTierTracker:
    """Per (pod uid, ThinkTier key): what that pod's sidecar reported, across its restarts."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], PodTrack] = {}

    def observe(self, uid: str, snapshot: ThinkingAnswer) -> None:
        """Take one `GET /thinking` answer of pod `uid`; a ThinkTier absent from it keeps its last figures."""
        for tt in snapshot.think_tiers:
            key = f"{tt.namespace}/{tt.name}"
            self.pods.setdefault((uid, key), PodTrack()).observe(tt)

    def retain(self, selected: Mapping[str, Iterable[str]]) -> None:
        """Keep only pods present now and the ThinkTiers that select them (`selected`: uid → tier keys)."""
        keep = {(uid, key) for uid, keys in selected.items() for key in keys}
        self.pods = {k: v for k, v in self.pods.items() if k in keep}

    def tracks(self, tier_key: str, uids: Iterable[str]) -> list[PodTrack]:
        return [t for uid in uids if (t := self.pods.get((uid, tier_key))) is not None]


def merge_class(tracks: Sequence[PodTrack], name: str, tier: Tier) -> ClassSeries:
    """The class's figures over every pod, only those gathered under `tier` at its current budget."""
    merged = ClassSeries(tier.name, tier.budget_tokens)
    for pod in tracks:
        track = pod.classes.get(name)
        if track is None:
            continue
        series = track.total()
        if series.key == merged.key:
            merged = merged.plus(series)
    return merged


def class_status(name: str, tier: Tier, series: ClassSeries, cal: Calibration) -> dict[str, Any]:
    """ClassStatus-shaped figures, computed by the sidecar's own rules (`ClassStats.status`)."""
    stats = ClassStats(name, tier, hist=series.hist, samples=series.samples, truncations=series.truncations,
                       thinking_only=series.thinking_only)
    full = stats.status(cal)
    return {k: full[k] for k in CLASS_STATUS_FIELDS}


def _share_above(part: int, whole: int, threshold_percent: int) -> bool:
    return whole > 0 and part * 100 > threshold_percent * whole


def _alert(kind: str, reason: str, what: str, threshold: int, cal: Calibration,
           ready: Sequence[tuple[str, int, int]]) -> DesiredCondition:
    """`ready`: (class, part, whole) of the classes with minSamples; True when a share exceeds `threshold`."""
    if not ready:
        return DesiredCondition(kind, ConditionStatus.UNKNOWN, Reason.NOT_ENOUGH_SAMPLES,
                                f"no class has {cal.min_samples} samples yet")
    hits = [(n, p, w) for n, p, w in ready if _share_above(p, w, threshold)]
    if hits:
        detail = "; ".join(f"{n}: {percent(p, w)}% {what}" for n, p, w in hits)
        return DesiredCondition(kind, ConditionStatus.TRUE, reason, f"{detail} (threshold {threshold}%)")
    return DesiredCondition(kind, ConditionStatus.FALSE, Reason.WITHIN_THRESHOLD,
                            f"every class with {cal.min_samples}+ samples is within {threshold}%")


def thinktier_status(
    view: TierView,
    tracks: Sequence[PodTrack],
    *,
    previous: Iterable[Mapping[str, Any]] | None,
    selected: int,
    synced: int,
    problems: Sequence[Problem],
    now: dt.datetime,
    applied: Mapping[str, Applied] | None = None,
) -> dict[str, Any]:
    """The whole status to write for one ThinkTier (without lastUpdated); `problems`: those the selected pods'
    resolved policies attribute to it (the spec's own are added here); `applied`: autoApply's budgets in
    force per class (the figures count under them), whose next step this status records."""
    spec = view.spec
    cal = spec.calibration
    auto = cal.auto_apply is AutoApply.ENABLED
    tiers = {t.name: t for t in spec.tiers}
    plan = [(c.name, tiers[c.tier]) for c in spec.classes or [] if c.tier in tiers]
    if UNCLASSIFIED not in {name for name, _ in plan}:
        plan.append((UNCLASSIFIED, tiers[spec.default_tier]))
    classes: list[dict[str, Any]] = []
    truncated: list[tuple[str, int, int]] = []
    unused: list[tuple[str, int, int]] = []
    for name, declared in plan:
        before = (applied or {}).get(name) if auto else None
        tier = declared.model_copy(update={"budget_tokens": before.budget}) if before is not None else declared
        series = merge_class(tracks, name, tier)
        status = class_status(name, tier, series, cal)
        if auto:
            moved = step(cal, declared.budget_tokens, before, status["recommendedBudgetTokens"], series.samples, now)
            status.update(declaredBudgetTokens=declared.budget_tokens, **moved.wire())
        classes.append(status)
        if series.samples >= cal.min_samples:
            truncated.append((name, series.truncations, series.samples))
            p50 = status["p50"] or 0
            unused.append((name, max(tier.budget_tokens - p50, 0), tier.budget_tokens))

    synced_c = synced_condition(selected, synced, view.generation)
    problems = [*problems, *(p for p in tier_spec_problems(view) if p not in problems)]
    if problems:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.FALSE, problems[0].reason,
                                 "; ".join(p.message for p in problems))
    elif synced_c.status is not ConditionStatus.TRUE:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.FALSE, synced_c.reason, synced_c.message)
    else:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.TRUE, Reason.MEASURING,
                                 synced_counts(selected, synced, view.generation))
    desired = [
        ready,
        synced_c,
        _alert(ConditionType.TRUNCATION_HIGH, Reason.TRUNCATION_ABOVE_THRESHOLD, "of calls truncated",
               cal.truncation_alert_percent, cal, truncated),
        _alert(ConditionType.UNDER_USED, Reason.MEDIAN_FAR_BELOW_BUDGET, "of the budget unused at P50",
               cal.under_use_alert_percent, cal, unused),
    ]
    if auto:
        moved_classes = [f"{c['name']} {c['declaredBudgetTokens']}->{c['appliedBudgetTokens']}" for c in classes
                         if c["appliedBudgetTokens"] != c["declaredBudgetTokens"]]
        desired.append(DesiredCondition(
            ConditionType.AUTO_APPLIED, ConditionStatus.TRUE if moved_classes else ConditionStatus.FALSE,
            Reason.APPLIED_IN_CLUSTER if moved_classes else Reason.AS_DECLARED,
            ("applied to the sidecars' policy, spec unchanged: " + ", ".join(moved_classes)) if moved_classes
            else "every class runs its declared budget; spec is never written, remove autoApply to roll back"))
    calls = sum(t.total_calls for t in tracks)
    return {
        "observedGeneration": view.generation,
        "conditions": build_conditions(previous, desired, generation=view.generation, now=now),
        "classes": classes,
        "unclassifiedPercent": percent(sum(t.total_unclassified for t in tracks), calls),
    }


__all__ = [
    "ClassSeries",
    "ClassTrack",
    "PodTrack",
    "ThinkTierTracker",
    "class_status",
    "merge_class",
    "thinktier_status",
]
