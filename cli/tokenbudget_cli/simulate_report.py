"""What `simulate` prints: the fate of the trace's calls, the dollars, the ladder timeline, dry-run counts.

`summarize` is pure (the JSON for scripts and tests); `render` lays the same figures out for people.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

from pydantic import Field
from rich.console import Console

from tokenbudget_api.common import ApiModel
from tokenbudget_api.tokenbudget import Stage
from tokenbudget_cli import console
from tokenbudget_cli.console import stage_text
from tokenbudget_cli.simulate import Result
from tokenbudget_cli.thinking_sim import ClassOutcome


class Totals(ApiModel):
    calls: int = 0
    tokens: int = 0
    cost_usd: Decimal = Field(default=Decimal(0), alias="costUSD")


class TimelineEntry(ApiModel):
    at: str
    budget: str
    stage: Stage
    percent: int
    window: str


class Summary(ApiModel):
    """`simulate -o json`."""

    trace: Totals
    admitted: Totals
    throttled: Totals
    throttle_delay_seconds: float = 0.0
    downgraded: Totals
    downgrades: dict[str, int] = Field(default_factory=dict, description="from->to: calls")
    refused: Totals
    refused_by_reason: dict[str, int] = Field(default_factory=dict)
    saved_usd: Decimal = Field(default=Decimal(0), alias="savedUSD", description="Trace cost minus admitted cost.")
    timeline: list[TimelineEntry] = Field(default_factory=list)
    dry_run: dict[str, dict[str, int]] = Field(default_factory=dict, description="DryRun budget: action: calls.")
    thinking: dict[str, list[ClassOutcome]] = Field(
        default_factory=dict, description="ThinkTier namespace/name: per class, what calibration would give.")


def _add(t: Totals, tokens: int, cost: Decimal | None) -> None:
    t.calls += 1
    t.tokens += tokens
    t.cost_usd += cost or Decimal(0)


REFUSALS = ("Reject", "Block")  # the sidecar checks caps (Reject) before the ladder and the windows (Block)


def _dry_actions(decisions: list[str], budgets: dict[str, Counter[str]]) -> dict[str, set[str]]:
    """What each DryRun budget would have done to one call, once per action: a call it would have refused
    counts only as that refusal (enforced, it would never have reached its Downgrade or its hold)."""
    found: dict[str, set[str]] = {}
    for d in decisions:
        budget, _, action = d.partition(":DryRun:")
        if action and budget in budgets:
            found.setdefault(budget, set()).add(action)
    for budget, actions in found.items():
        refusal = next((a for a in REFUSALS if a in actions), None)
        if refusal is not None:
            found[budget] = {refusal}
    return found


def summarize(result: Result) -> Summary:
    s = Summary(trace=Totals(), admitted=Totals(), throttled=Totals(), downgraded=Totals(), refused=Totals())
    reasons: Counter[str] = Counter()
    downgrades: Counter[str] = Counter()
    dry: dict[str, Counter[str]] = {name: Counter() for name in sorted(result.dry_run)}
    for f in result.fates:
        tokens = f.record.usage.total_tokens
        _add(s.trace, tokens, f.record.cost_usd)
        for budget, actions in _dry_actions(f.decisions, dry).items():
            dry[budget].update(actions)
        if not f.admitted:
            _add(s.refused, tokens, f.record.cost_usd)
            reasons[f.refused_reason or "refused"] += 1
            continue
        _add(s.admitted, tokens, f.cost_usd)
        if any(d.endswith(":Throttle") and ":DryRun:" not in d for d in f.decisions):
            _add(s.throttled, tokens, f.cost_usd)
            s.throttle_delay_seconds += f.delay_s
        if f.downgraded:
            _add(s.downgraded, tokens, f.cost_usd)
            downgrades[f"{f.record.model}->{f.model}"] += 1
    s.refused_by_reason, s.downgrades = dict(reasons), dict(downgrades)
    s.saved_usd = s.trace.cost_usd - s.admitted.cost_usd
    s.timeline = [TimelineEntry(at=c.at.isoformat(), budget=c.budget, stage=c.stage, percent=c.percent,
                                window=c.window) for c in result.timeline]
    s.dry_run = {name: dict(counts) for name, counts in dry.items()}
    return s


def as_json(summary: Summary) -> str:
    return json.dumps(summary.model_dump(mode="json", by_alias=True), indent=2)


def render(summary: Summary, out: Console) -> None:
    table = console.table("", "CALLS", "TOKENS", "USD", "NOTE", title="what the budget would have done")

    def row(label: str, t: Totals, note: str = "") -> None:
        table.add_row(label, f"{t.calls:,}", f"{t.tokens:,}", f"${t.cost_usd:,.4f}", note)

    row("trace (as recorded)", summary.trace)
    row("admitted", summary.admitted)
    row("  throttled", summary.throttled, f"waited {summary.throttle_delay_seconds:,.1f} s in all"
        if summary.throttled.calls else "")
    row("  downgraded", summary.downgraded, ", ".join(f"{k} x{v}" for k, v in summary.downgrades.items()))
    row("refused", summary.refused, ", ".join(f"{k} x{v}" for k, v in summary.refused_by_reason.items()))
    out.print(table)
    out.print(f"Dollars: ${summary.admitted.cost_usd:,.4f} admitted of ${summary.trace.cost_usd:,.4f} "
              f"in the trace; ${summary.saved_usd:,.4f} not spent.")
    if summary.timeline:
        timeline = console.table("TIME", "BUDGET", "STAGE", "%", "WINDOW", title="ladder timeline")
        for c in summary.timeline:
            timeline.add_row(c.at, c.budget, stage_text(c.stage), f"{c.percent}%", c.window)
        out.print(timeline)
    for name, counts in summary.dry_run.items():
        what = ", ".join(f"{a} x{n}" for a, n in sorted(counts.items())) or "nothing"
        out.print(f"\nDryRun {name} would have: {what} (and admitted every call)")


def render_thinking(summary: Summary, out: Console) -> None:
    for name, classes in summary.thinking.items():
        table = console.table("CLASS", "TIER", "BUDGET", "SAMPLES", "P95", "TRUNCATED%", "RECOMMENDED", "THINKING",
                              "AFTER", "CUT%", title=f"ThinkTier {name}: calibration on this trace")
        for c in classes:
            table.add_row(c.name, c.tier, f"{c.budget_tokens:,}", str(c.samples), _num(c.p95),
                          c.truncation_percent or "-", _num(c.recommended_budget_tokens), f"{c.thinking_tokens:,}",
                          _num(c.thinking_tokens_after), c.cut_percent or "-")
        out.print(table)
        out.print("BUDGET and RECOMMENDED are thinking tokens a call may use (and holds against token budgets); "
                  "THINKING and AFTER are what the trace's calls thought, and would with the recommendation; "
                  "CUT% the calls that would think less. No recommendation below minSamples calls.")


def _num(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
