"""Waste insights per budget: the per-call features of usage records (sidecar features.py) summed by hour,
folded into the compact `status.insights` block over the last day.

Why hourly sums and not records: a day of a busy budget is millions of calls; 24 buckets of a dozen sums
and one growth histogram each fit in the usage-state ConfigMap, so insights are committed with the cursors
like every other sum (aggregate.py): a crash neither loses nor double counts a call's features.

What each figure is (shares rounded down; tokens are the sidecar's prompt counts of billed calls):

    RepeatedContext  repeated tokens / prompt tokens          dollars: those tokens at the price paid
    CacheMiss        missed / cacheable tokens                 dollars: what a cache hit would have saved
    Retry            retried calls / calls, and their dollars / all dollars
    ToolOutput       tool-result tokens / prompt tokens        dollars: those tokens at the input price
    InputGrowth      P95 of prompt growth per follow-up turn (shrinking turns count as 0)
    UnacceptedSpend  dollars of conversations never accepted / all dollars (only with acceptance reports)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from tokenbudget_api.insights import WINDOW_HOURS, InsightName
from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import as_utc
from tokenbudget_operator.reconciler import insight_consumers as consumer_waste
from tokenbudget_operator.reconciler.conditions import k8s_time

ZERO = Decimal(0)
HOUR = dt.timedelta(hours=1)
GROWTH_ACCURACY = 0.02  # growth quantiles within 2%: half the buckets of the thinking sketch's 1%


def _fmt(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


def _percent(part: int | Decimal, whole: int | Decimal) -> int | None:
    """Share in whole percent, rounded down; None when there is nothing to share."""
    if not whole:
        return None
    return min(int(Decimal(part) * 100 / Decimal(whole)), 100)


@dataclass
class HourSums:
    """One budget's features in one hour. Integer fields are tokens or calls; Decimal fields are dollars."""

    calls: int = 0
    billed_calls: int = 0
    input_tokens: int = 0
    tokens: int = 0  # every token billed (input and output)
    cost: Decimal = ZERO
    repeated_calls: int = 0
    repeated_tokens: int = 0
    repeated_cost: Decimal = ZERO
    cacheable_tokens: int = 0
    miss_calls: int = 0
    miss_tokens: int = 0
    miss_cost: Decimal = ZERO
    tool_calls: int = 0
    tool_tokens: int = 0
    tool_cost: Decimal = ZERO
    retry_calls: int = 0
    retry_tokens: int = 0
    retry_cost: Decimal = ZERO
    accepted: int = 0
    accepted_calls: int = 0
    accepted_tokens: int = 0
    accepted_cost: Decimal = ZERO
    growth: LogHistogram = field(default_factory=lambda: LogHistogram(GROWTH_ACCURACY))
    consumers: dict[str, consumer_waste.Waste] = field(default_factory=dict)  # "Pod:name" / "User:name"

    def merge(self, other: HourSums) -> None:
        for f in fields(self):
            if f.name == "growth":
                self.growth.merge(other.growth)
            elif f.name == "consumers":
                consumer_waste.merge(self.consumers, other.consumers)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def wire(self) -> list[Any]:
        """Values in field order (no names: 24 of these per budget share the ConfigMap), growth and consumers last."""
        out = [_num(getattr(self, f.name)) for f in fields(self) if f.name not in ("growth", "consumers")]
        return [*out, self.growth.wire(), {k: w.wire() for k, w in self.consumers.items()}]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> HourSums:
        sums = cls()
        for f, value in zip(fields(sums), raw, strict=True):
            if f.name == "growth":
                sums.growth = LogHistogram.from_wire(dict(value))
            elif f.name == "consumers":
                sums.consumers = {str(k): consumer_waste.Waste.from_wire(v) for k, v in dict(value).items()}
            elif isinstance(getattr(sums, f.name), Decimal):
                setattr(sums, f.name, Decimal(str(value)))
            else:
                setattr(sums, f.name, int(value))
        return sums

    def add_call(self, record: UsageRecord, pod: str | None = None) -> None:
        feats = record.features
        if feats is None:
            return
        consumer_waste.add(self.consumers, record, pod)
        cost = record.cost_usd or ZERO
        self.calls += 1
        self.cost += cost
        self.tokens += record.usage.total_tokens
        if record.usage.total_tokens > 0:
            self.billed_calls += 1
            self.input_tokens += feats.prompt_tokens
            self.repeated_tokens += feats.repeated_tokens
            self.repeated_calls += 1 if feats.repeated_tokens else 0
            self.repeated_cost += feats.repeated_usd or ZERO
            self.cacheable_tokens += feats.cacheable_tokens
            self.miss_tokens += feats.cache_miss_tokens
            self.miss_calls += 1 if feats.cache_miss_tokens else 0
            self.miss_cost += feats.cache_miss_usd or ZERO
            self.tool_tokens += feats.tool_output_tokens
            self.tool_calls += 1 if feats.tool_output_tokens else 0
            self.tool_cost += feats.tool_output_usd or ZERO
        if feats.growth_tokens is not None:  # a property of the prompt: measured billed or not
            self.growth.add(max(feats.growth_tokens, 0))
        if feats.retry > 0:
            self.retry_calls += 1
            self.retry_tokens += record.usage.total_tokens
            self.retry_cost += cost


class InsightBook:
    """Per budget ("namespace/name"), hourly `HourSums` of the last day; pure, persisted by `wire()`."""

    def __init__(self) -> None:
        self.budgets: dict[str, dict[dt.datetime, HourSums]] = {}

    def add(self, record: UsageRecord, pod: str | None = None) -> None:
        """Fold one new record of pod `pod` (each record once: the aggregator's cursor guarantees it)."""
        hour = as_utc(record.time).replace(minute=0, second=0, microsecond=0)
        if record.features is not None and record.outcome is not Outcome.REFUSED:
            for budget in dict.fromkeys(record.budgets):
                self._hour(budget, hour).add_call(record, pod)
        if record.accepted is not None:
            acc = record.accepted
            for budget in dict.fromkeys(acc.budgets):
                sums = self._hour(budget, hour)
                sums.accepted += 1
                sums.accepted_calls += acc.calls
                sums.accepted_tokens += acc.tokens
                sums.accepted_cost += acc.cost_usd

    def _hour(self, budget: str, hour: dt.datetime) -> HourSums:
        hours = self.budgets.setdefault(budget, {})
        sums = hours.get(hour)
        if sums is None:
            sums = hours[hour] = HourSums()
            for old in [h for h in hours if h <= hour - WINDOW_HOURS * HOUR]:
                del hours[old]
        return sums

    def wire(self) -> dict[str, Any]:
        return {b: {h.isoformat(): sums.wire() for h, sums in hours.items()} for b, hours in self.budgets.items()}

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> InsightBook:
        book = cls()
        for budget, hours in raw.items():
            book.budgets[budget] = {as_utc(dt.datetime.fromisoformat(h)): HourSums.from_wire(s)
                                    for h, s in hours.items()}
        return book

    def forget(self, budget: str) -> None:
        self.budgets.pop(budget, None)

    def totals(self, budget: str, now: dt.datetime) -> tuple[dt.datetime, HourSums]:
        """(start of the window, sums of the last day) at `now`."""
        since = as_utc(now).replace(minute=0, second=0, microsecond=0) - (WINDOW_HOURS - 1) * HOUR
        total = HourSums()
        for hour, sums in self.budgets.get(budget, {}).items():
            if hour >= since:
                total.merge(sums)
        return since, total

    def status(self, budget: str, now: dt.datetime) -> dict[str, Any] | None:
        """`status.insights` in wire form, worst (in dollars) first; None before any call with features."""
        since, t = self.totals(budget, now)
        if not t.calls:
            return None
        items: list[dict[str, Any]] = [
            _item(InsightName.REPEATED_CONTEXT, _percent(t.repeated_tokens, t.input_tokens), t.repeated_tokens,
                  t.repeated_calls, t.repeated_cost),
            _item(InsightName.CACHE_MISS, _percent(t.miss_tokens, t.cacheable_tokens), t.miss_tokens, t.miss_calls,
                  t.miss_cost),
            {**_item(InsightName.RETRY, _percent(t.retry_calls, t.calls), t.retry_tokens, t.retry_calls,
                     t.retry_cost), **_opt("costPercent", _percent(t.retry_cost, t.cost))},
            _item(InsightName.TOOL_OUTPUT, _percent(t.tool_tokens, t.input_tokens), t.tool_tokens, t.tool_calls,
                  t.tool_cost),
        ]
        out: dict[str, Any] = {"since": k8s_time(since), "calls": t.calls, "inputTokens": t.input_tokens,
                               "costUSD": _fmt(t.cost)}
        p50, p95 = t.growth.quantile(0.5), t.growth.quantile(0.95)
        if p50 is not None and p95 is not None:
            out["inputGrowth"] = {"turns": t.growth.count, "p50Tokens": p50, "p95Tokens": p95}
            items.append({"name": InsightName.INPUT_GROWTH.value, "tokens": p95, "calls": t.growth.count})
        if t.accepted:
            unaccepted = max(t.cost - t.accepted_cost, ZERO)
            share = _percent(unaccepted, t.cost) or 0
            out["outcomes"] = {"accepted": t.accepted, "costPerAcceptedUSD": _fmt(_cents(t.cost / t.accepted)),
                               "tokensPerAccepted": t.tokens // t.accepted,
                               "unacceptedSpendPercent": share}
            items.append(_item(InsightName.UNACCEPTED_SPEND, share, max(t.tokens - t.accepted_tokens, 0),
                               max(t.calls - t.accepted_calls, 0), unaccepted))
        items.sort(key=lambda i: (-Decimal(i.get("costUSD", "0")), i["name"]))
        out["items"] = items
        if t.consumers:
            out["consumers"] = consumer_waste.top(t.consumers)
        return out


def _num(value: int | Decimal) -> int | str:
    return str(value) if isinstance(value, Decimal) else value


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.000001"))


def _opt(key: str, value: Any) -> dict[str, Any]:
    return {} if value is None else {key: value}


def _item(name: InsightName, percent: int | None, tokens: int, calls: int, cost: Decimal) -> dict[str, Any]:
    return {"name": name.value, **_opt("percent", percent), "tokens": tokens, "calls": calls, "costUSD": _fmt(cost)}


__all__ = ["HourSums", "InsightBook"]
