"""What insights set off: the budget's Waste condition, a Warning Event when it turns True, and metrics.

The Waste condition is True while any insight is above the threshold the budget's spec sets for it
(`spec.insights.thresholds`), reason naming the first one (e.g. RepeatedContextAboveThreshold) and the
message every one with its share and dollars; False (WithinThresholds) otherwise, and absent when the
budget sets no thresholds. It never touches Ready: waste is advice, not a fault.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import Gauge

from tokenbudget_api.common import ConditionStatus
from tokenbudget_api.insights import InsightName, InsightThresholds
from tokenbudget_operator.reconciler.conditions import DesiredCondition, build_conditions

WASTE = "Waste"
WITHIN = "WithinThresholds"
NO_DATA = "NoInsightsYet"

SHARE = Gauge("tokenbudget_insight_percent", "Share of a budget's input, calls or dollars an insight covers "
              "over the last day (Retry: of calls), in percent.", ["namespace", "budget", "insight"])
COST = Gauge("tokenbudget_insight_cost_usd", "Dollars an insight represents over the last day.",
             ["namespace", "budget", "insight"])
GROWTH = Gauge("tokenbudget_input_growth_tokens", "Prompt growth per conversation turn over the last day.",
               ["namespace", "budget", "quantile"])
PER_OUTCOME = Gauge("tokenbudget_cost_per_accepted_outcome_usd", "Dollars spent per accepted outcome over the "
                    "last day (only when the app reports acceptances).", ["namespace", "budget"])
TOKENS_PER_OUTCOME = Gauge("tokenbudget_tokens_per_accepted_outcome", "Tokens per accepted outcome over the last "
                           "day (only when the app reports acceptances).", ["namespace", "budget"])


def _limits(thresholds: InsightThresholds) -> list[tuple[InsightName, int | None, str]]:
    """(insight, threshold, unit) in the order the reason prefers."""
    return [
        (InsightName.REPEATED_CONTEXT, thresholds.repeated_context_percent, "%"),
        (InsightName.CACHE_MISS, thresholds.cache_miss_percent, "%"),
        (InsightName.RETRY, thresholds.retry_percent, "%"),
        (InsightName.TOOL_OUTPUT, thresholds.tool_output_percent, "%"),
        (InsightName.INPUT_GROWTH, thresholds.input_growth_p95_tokens, " tokens"),
        (InsightName.UNACCEPTED_SPEND, thresholds.unaccepted_spend_percent, "%"),
    ]


def crossed(insights: Mapping[str, Any] | None, thresholds: InsightThresholds) -> list[str]:
    """One phrase per insight above its threshold, in `_limits` order."""
    if not insights:
        return []
    items = {i["name"]: i for i in insights.get("items", [])}
    out = []
    for name, limit, unit in _limits(thresholds):
        item = items.get(name.value)
        if limit is None or item is None:
            continue
        value = item.get("tokens") if name is InsightName.INPUT_GROWTH else item.get("percent")
        if value is not None and value > limit:
            out.append(f"{name.value} {value}{unit} > {limit}{unit} (${item.get('costUSD', '0')})")
    return out


def waste_condition(previous: Iterable[Mapping[str, Any]] | None, insights: Mapping[str, Any] | None,
                    thresholds: InsightThresholds | None, *, generation: int | None,
                    now: dt.datetime) -> list[dict[str, Any]]:
    """The Waste condition as a one-item list to append to the budget's conditions; [] without thresholds."""
    if thresholds is None:
        return []
    above = crossed(insights, thresholds)
    if above:
        want = DesiredCondition(WASTE, ConditionStatus.TRUE, above[0].split(" ")[0] + "AboveThreshold",
                                "; ".join(above))
    elif not insights:
        want = DesiredCondition(WASTE, ConditionStatus.UNKNOWN, NO_DATA, "no call measured in the last day")
    else:
        want = DesiredCondition(WASTE, ConditionStatus.FALSE, WITHIN, "every insight is within its threshold")
    return build_conditions([c for c in previous or [] if c.get("type") == WASTE], [want],
                            generation=generation, now=now)


def turned_true(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The Waste condition of `after` when it is True and was not in `before` (an Event is due)."""
    was = next((c for c in before if c.get("type") == WASTE), None)
    now = next((c for c in after if c.get("type") == WASTE), None)
    if now is not None and now.get("status") == "True" and (was is None or was.get("status") != "True"):
        return now
    return None


def export(namespace: str, budget: str, insights: Mapping[str, Any] | None) -> None:
    """Set the budget's insight gauges (left as they were when there is nothing new to say)."""
    if not insights:
        return
    for item in insights.get("items", []):
        labels = (namespace, budget, item["name"])
        if item.get("percent") is not None:
            SHARE.labels(*labels).set(item["percent"])
        COST.labels(*labels).set(float(item.get("costUSD", "0")))
    growth = insights.get("inputGrowth")
    if growth:
        GROWTH.labels(namespace, budget, "0.5").set(growth["p50Tokens"])
        GROWTH.labels(namespace, budget, "0.95").set(growth["p95Tokens"])
    outcomes = insights.get("outcomes")
    if outcomes:
        PER_OUTCOME.labels(namespace, budget).set(float(outcomes["costPerAcceptedUSD"]))
        TOKENS_PER_OUTCOME.labels(namespace, budget).set(outcomes["tokensPerAccepted"])


__all__ = ["WASTE", "crossed", "export", "turned_true", "waste_condition"]
