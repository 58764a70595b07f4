"""`kubectl tokenbudget insights [-n NS] [NAME]`: each budget's waste table, worst (in dollars) first.

Read from `status.insights` alone (the operator computes it from the sidecars' per-call features), so the
plugin needs no access to pods or sidecars. Rows across budgets are ranked together: the waste worth
fixing first is at the top whichever budget it is in. `-o json` gives the same rows to scripts.
"""

from __future__ import annotations

import json
from decimal import Decimal

from pydantic import Field
from rich.console import Console

from tokenbudget_api.common import ApiModel
from tokenbudget_api.insights import ConsumerWaste, InputGrowth, InsightName, Outcomes
from tokenbudget_api.tokenbudget import TokenBudget
from tokenbudget_cli import console
from tokenbudget_cli.kube import name_of, namespace_of

WHAT = {
    InsightName.REPEATED_CONTEXT: "input an earlier call already sent",
    InsightName.CACHE_MISS: "cacheable input the provider did not serve from cache",
    InsightName.RETRY: "calls that were SDK retries",
    InsightName.TOOL_OUTPUT: "input that was tool output",
    InsightName.INPUT_GROWTH: "P95 prompt growth per conversation turn",
    InsightName.UNACCEPTED_SPEND: "spend on conversations never accepted",
}


class Row(ApiModel):
    namespace: str
    budget: str
    insight: InsightName
    percent: int | None = None
    cost_percent: int | None = None
    tokens: int = 0
    calls: int = 0
    cost_usd: Decimal | None = Field(default=None, alias="costUSD")


class BudgetSummary(ApiModel):
    namespace: str
    budget: str
    calls: int
    cost_usd: Decimal = Field(alias="costUSD")
    input_growth: InputGrowth | None = None
    outcomes: Outcomes | None = None
    consumers: list[ConsumerWaste] = Field(default_factory=list)


class InsightsDocument(ApiModel):
    rows: list[Row] = Field(default_factory=list)
    budgets: list[BudgetSummary] = Field(default_factory=list)
    without_insights: list[str] = Field(default_factory=list, description="Budgets with no call measured yet.")


def document(budgets: list[TokenBudget]) -> InsightsDocument:
    doc = InsightsDocument()
    for b in budgets:
        ns, name = namespace_of(b), name_of(b)
        insights = b.status.insights if b.status is not None else None
        if insights is None:
            doc.without_insights.append(f"{ns}/{name}")
            continue
        doc.budgets.append(BudgetSummary(namespace=ns, budget=name, calls=insights.calls, cost_usd=insights.cost_usd,
                                         input_growth=insights.input_growth, outcomes=insights.outcomes,
                                         consumers=insights.consumers or []))
        doc.rows.extend(Row(namespace=ns, budget=name, insight=i.name, percent=i.percent,
                            cost_percent=i.cost_percent, tokens=i.tokens, calls=i.calls, cost_usd=i.cost_usd)
                        for i in insights.items)
    doc.rows.sort(key=lambda r: (-(r.cost_usd or Decimal(0)), r.namespace, r.budget, r.insight.value))
    return doc


def as_json(doc: InsightsDocument) -> str:
    return json.dumps(doc.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2)


def render(doc: InsightsDocument, out: Console) -> None:
    if not doc.rows and not doc.without_insights:
        out.print("No TokenBudgets found.")
        return
    if doc.rows:
        table = console.table("BUDGET", "INSIGHT", "SHARE", "USD", "TOKENS", "CALLS", "WHAT",
                              title="waste over the last day, worst first")
        for r in doc.rows:
            share = "-" if r.percent is None else f"{r.percent}%"
            if r.cost_percent is not None:
                share += f" ({r.cost_percent}% of $)"
            usd = "-" if r.cost_usd is None else f"${r.cost_usd:,.4f}"
            table.add_row(f"{r.namespace}/{r.budget}", r.insight.value, share, usd, f"{r.tokens:,}", str(r.calls),
                          WHAT[r.insight])
        out.print(table)
    for s in doc.budgets:
        line = f"{s.namespace}/{s.budget}: {s.calls:,} calls, ${s.cost_usd:,.4f}"
        if s.input_growth is not None:
            line += (f"; prompt growth per turn P50 {s.input_growth.p50_tokens:,} / P95 {s.input_growth.p95_tokens:,}"
                     f" tokens over {s.input_growth.turns:,} turns")
        if s.outcomes is not None:
            o = s.outcomes
            line += (f"; ${o.cost_per_accepted_usd:,.4f} and {o.tokens_per_accepted:,} tokens per accepted outcome "
                     f"({o.accepted:,} accepted, {o.unaccepted_spend_percent}% of spend never accepted)")
        else:
            line += "; per accepted outcome: no acceptance reported (optional, see README)"
        out.print(line, highlight=False)
    consumers = [(s, c) for s in doc.budgets for c in s.consumers]
    if consumers:
        table = console.table("BUDGET", "KIND", "NAME", "CALLS", "REPEATED", "REPEATED USD", "RETRIES", "RETRY USD",
                              "USD", title="by pod and user")
        for s, c in consumers:
            repeated = "-" if c.repeated_percent is None else f"{c.repeated_percent}%"
            table.add_row(f"{s.namespace}/{s.budget}", c.kind, c.name, f"{c.calls:,}", repeated,
                          f"${c.repeated_usd:,.4f}", str(c.retry_calls), f"${c.retry_usd:,.4f}", f"${c.cost_usd:,.4f}")
        out.print(table)
    for key in doc.without_insights:
        out.print(f"{key}: no call measured in the last day", highlight=False)


__all__ = ["InsightsDocument", "as_json", "document", "render"]
