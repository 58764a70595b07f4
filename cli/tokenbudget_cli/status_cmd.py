"""`kubectl tokenbudget status`: budgets and tiers as tables for people, or the same document as JSON/YAML."""

from __future__ import annotations

import json

import yaml
from rich.console import Console

from tokenbudget_api.common import Condition, ConditionStatus
from tokenbudget_cli import console
from tokenbudget_cli.console import percent_style, stage_text
from tokenbudget_cli.status_view import BudgetLine, StatusDocument, TierLine, amount

GOOD_WHEN_TRUE = {"Ready", "Synced", "Notifications"}


def as_json(doc: StatusDocument) -> str:
    return json.dumps(doc.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2)


def as_yaml(doc: StatusDocument) -> str:
    return yaml.safe_dump(doc.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def render(doc: StatusDocument, out: Console) -> None:
    if not doc.budgets and not doc.think_tiers:
        out.print("No TokenBudgets or ThinkTiers found.")
        return
    for b in doc.budgets:
        _budget(b, out)
    for t in doc.think_tiers:
        _tier(t, out)


def _budget(b: BudgetLine, out: Console) -> None:
    pods = f"{b.pods.synced}/{b.pods.selected} pods synced" if b.pods else "pods: not reported yet"
    used = f"{b.used_percent}% of {b.tightest_window}" if b.used_percent is not None else "no use reported"
    out.print(f"[bold]TokenBudget {b.namespace}/{b.name}[/]  {b.enforcement.value}  stage {stage_text(b.stage)}  "
              f"{used}  {pods}")
    if b.without_sidecar_count:
        shown = ", ".join(b.without_sidecar or [])
        more = b.without_sidecar_count - len(b.without_sidecar or [])
        out.print(f"  [bold red]{b.without_sidecar_count} selected pod(s) run without the sidecar, unmetered:[/] "
                  f"{shown}{f' and {more} more' if more > 0 else ''} (created before the namespace opted in, "
                  "admitted while the webhook was down, or opted out: recreate them)")
    elif b.without_sidecar is None:
        out.print("  (pods not listed: no permission to list pods, so pods without the sidecar are not known)")
    if b.windows:
        table = console.table("WINDOW", "KEY", "PERIOD", "UNIT", "USED", "LIMIT", "REMAINING", "%", "RESETS")
        for w in b.windows:
            rolling = w.period is not None and w.period[0].isdigit()  # a duration such as 5m, not Month
            resets = w.resets_at.strftime("%Y-%m-%d %H:%M UTC") if w.resets_at else "rolling" if rolling else "-"
            table.add_row(w.name, w.key or "-", w.period or "-", w.unit.value, amount(w.used, w.unit),
                          amount(w.limit, w.unit), amount(w.remaining, w.unit),
                          f"[{percent_style(w.percent)}]{w.percent}%[/]", resets)
        out.print(table)
    if b.top_consumers:
        table = console.table("KIND", "NAME", "TOKENS", "USD", title="top consumers")
        for c in b.top_consumers:
            table.add_row(c.kind, c.name, f"{c.tokens:,}", f"${c.cost_usd:,.4f}")
        out.print(table)
    if b.dry_run:
        table = console.table("ACTION", "CALLS", "TOKENS", "USD", title="dry run: would have")
        for d in b.dry_run:
            table.add_row(d.action, str(d.count), f"{d.tokens:,}", f"${d.cost_usd:,.4f}")
        out.print(table)
    _conditions(b.conditions, out)
    out.print()


def _tier(t: TierLine, out: Console) -> None:
    unclassified = f"{t.unclassified_percent}% unclassified" if t.unclassified_percent is not None else ""
    out.print(f"[bold]ThinkTier {t.namespace}/{t.name}[/]  default tier {t.default_tier}  {unclassified}")
    if t.classes:
        table = console.table("CLASS", "TIER", "BUDGET", "SAMPLES", "P50", "P95", "P99", "TRUNCATED%", "UNDERUSE%",
                              "RECOMMENDED")
        for c in t.classes:
            table.add_row(c.name, c.tier, f"{c.budget_tokens:,}", str(c.samples), _int(c.p50), _int(c.p95),
                          _int(c.p99), c.truncation_percent or "-", c.under_use_percent or "-",
                          _int(c.recommended_budget_tokens))
        out.print(table)
    _conditions(t.conditions, out)
    out.print()


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _conditions(conditions: list[Condition], out: Console) -> None:
    """Ready and Synced read True when all is well; the others (Exhausted, TruncationHigh, ...) when not."""
    if not conditions:
        return
    table = console.table("TYPE", "STATUS", "REASON", "MESSAGE", title="conditions")
    for c in conditions:
        good = (c.status is ConditionStatus.TRUE) == (c.type in GOOD_WHEN_TRUE)
        table.add_row(c.type, f"[{'green' if good else 'red'}]{c.status.value}[/]", c.reason, c.message)
    out.print(table)
