"""What `kubectl tokenbudget status` shows, computed from the CRD status models and nothing else.

Pure: the same document feeds the tables for people and `-o json|yaml` for scripts, so a script reads
exactly the figures a person sees. `remaining` (limit - used of each window in its period, never negative)
and the selected pods running without the sidecar come from status, as the operator writes them; for a
status written by an older operator, without those fields, the plugin works them out itself (remaining from
used and limit, the bypassing pods from the namespace's pods when it may list them).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from pydantic import Field

from tokenbudget_api.common import ApiModel, Condition
from tokenbudget_api.thinktier import ClassStatus, ThinkTier
from tokenbudget_api.tokenbudget import Consumer, Enforcement, PodCounts, Stage, TokenBudget, Unit, WouldHave
from tokenbudget_cli.kube import PodFacts, name_of, namespace_of


class WindowLine(ApiModel):
    """One window (or one key of a per-key window) as the plugin shows it."""

    name: str
    key: str | None = None
    unit: Unit
    period: str | None = Field(default=None, description="The limit's calendar period, or its rolling duration.")
    used: Decimal
    limit: Decimal
    remaining: Decimal = Field(description="limit - used, never below zero.")
    percent: int
    resets_at: dt.datetime | None = None


class BudgetLine(ApiModel):
    """One TokenBudget: spec facts a reader needs beside its status."""

    namespace: str
    name: str
    enforcement: Enforcement
    stage: Stage | None = None
    used_percent: int | None = None
    tightest_window: str | None = None
    pods: PodCounts | None = None
    without_sidecar: list[str] | None = Field(
        default=None, description="Selected pods running without the sidecar (unmetered; status names at most 10); "
        "None: not known (an older operator's status, and pods could not be listed).")
    without_sidecar_count: int | None = Field(default=None, description="How many such pods there are.")
    windows: list[WindowLine] = Field(default_factory=list)
    top_consumers: list[Consumer] = Field(default_factory=list)
    dry_run: list[WouldHave] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    last_updated: dt.datetime | None = None


class TierLine(ApiModel):
    """One ThinkTier: its default tier, the share of calls no class matched, and each class's figures."""

    namespace: str
    name: str
    default_tier: str
    unclassified_percent: str | None = None
    classes: list[ClassStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    last_updated: dt.datetime | None = None


class StatusDocument(ApiModel):
    """`status -o json|yaml`: budgets and tiers in scope."""

    budgets: list[BudgetLine] = Field(default_factory=list)
    think_tiers: list[TierLine] = Field(default_factory=list)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal(0)


def budget_line(tb: TokenBudget, pods: list[PodFacts] | None = None) -> BudgetLine:
    """`pods`: the budget namespace's pods, only needed when status does not count the selected ones that
    bypass the sidecar (created before the namespace opted in, admitted while the webhook was down, or
    opted out): an operator older than that count."""
    status = tb.status
    line = BudgetLine(namespace=namespace_of(tb), name=name_of(tb), enforcement=tb.spec.enforcement)
    counted = status.pods if status is not None and status.pods is not None else None
    if counted is not None and counted.without_sidecar is not None:
        line.without_sidecar = list(counted.without_sidecar_pods or [])
        line.without_sidecar_count = counted.without_sidecar
    elif pods is not None:
        line.without_sidecar = sorted(p.name for p in pods if not p.has_sidecar and tb.spec.selector.matches(p.labels))
        line.without_sidecar_count = len(line.without_sidecar)
    if status is None:
        return line
    limits = {lim.name: lim for lim in tb.spec.limits or []}
    for w in status.windows or []:
        used, limit = _decimal(w.used), _decimal(w.limit)
        remaining = _decimal(w.remaining) if w.remaining is not None else max(limit - used, Decimal(0))
        spec = limits.get(w.name)
        period = None if spec is None else spec.period.value if spec.period else spec.duration
        line.windows.append(WindowLine(name=w.name, key=w.key, unit=w.unit, period=period, used=used, limit=limit,
                                       remaining=remaining, percent=w.percent, resets_at=w.resets_at))
    line.stage, line.used_percent, line.tightest_window = status.stage, status.used_percent, status.tightest_window
    line.pods, line.top_consumers = status.pods, list(status.top_consumers or [])
    line.dry_run, line.conditions = list(status.dry_run or []), list(status.conditions or [])
    line.last_updated = status.last_updated
    return line


def needs_pods(tb: TokenBudget) -> bool:
    """Whether the plugin must list the namespace's pods itself: status does not count the bypassing ones."""
    return tb.status is None or tb.status.pods is None or tb.status.pods.without_sidecar is None


def tier_line(tt: ThinkTier) -> TierLine:
    status = tt.status
    line = TierLine(namespace=namespace_of(tt), name=name_of(tt), default_tier=tt.spec.default_tier)
    if status is not None:
        line.unclassified_percent = status.unclassified_percent
        line.classes, line.conditions = list(status.classes or []), list(status.conditions or [])
        line.last_updated = status.last_updated
    return line


def document(budgets: list[TokenBudget], tiers: list[ThinkTier],
             pods: dict[str, list[PodFacts] | None] | None = None) -> StatusDocument:
    """`pods`: per namespace, its pods (None where they could not be listed)."""
    pods = pods or {}
    return StatusDocument(budgets=[budget_line(b, pods.get(namespace_of(b))) for b in budgets],
                          think_tiers=[tier_line(t) for t in tiers])


def amount(value: Decimal, unit: Unit) -> str:
    """A window amount for people: dollars with cents, tokens and requests with thousands separators."""
    if unit is Unit.USD:
        return f"${value:,.2f}"
    return f"{value:,.0f}"
