"""Cumulative spend per budget for Prometheus: tokens by kind, dollars and calls, by model (and user).

Why here, and why these are never lost or counted twice: the counters are part of the aggregator's state,
added to in `Aggregator.add` (a record counts once: the per-pod cursor drops repeats) and committed in the
same usage-state ConfigMap write as the cursors (aggregate.py, "Where the cursors live"). What /metrics shows
is the last *committed* state (`Fleet.spend`, replaced after each successful write), so:

- an operator restart (or a new leader) loads the committed state and shows exactly what was shown before
  (never lower: a later commit only adds), so Prometheus sees no reset at all;
- records pulled but not committed (a crash, a 409) were never shown, and are counted by whoever commits them;
- only the replica that reconciles shows the counters (a standby's copy would be stale and would double any
  sum over replicas); after a leader change the same series continue under the new replica's `instance`.

Cardinality is bounded per budget: the first `max_models` models and, for budgets with a per-User limit
(only those carry a `user` label), the first `max_users` users get series of their own; later ones are
folded into `OTHER`. A key keeps its series once it has one, so every series is monotonic. Worst case per
budget: (max_models + 1) x (max_users + 1) label sets, eight series each (286 sets, 2,288 series and 19 KB of
state at the defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from tokenbudget_api.usage import Outcome, UsageRecord

OTHER = "_other"  # the model or user label of keys past the cap
ZERO = Decimal(0)
# budget is "namespace/name", as the sidecar's per-budget metrics name it; namespace is its first part.
LABELS = ("namespace", "budget", "gen_ai_request_model", "user")
# OTel gen_ai.token.type: "input" and "output" are disjoint (their sum is every token); the details are parts of them.
TOKEN_TYPES = ("input", "output")
DETAIL_TYPES = ("cached_input", "cache_creation_input", "reasoning")


@dataclass
class Spend:
    """One label set's cumulative figures."""

    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_creation_input: int = 0
    reasoning: int = 0
    cost_usd: Decimal = ZERO
    calls: int = 0
    unpriced_calls: int = 0

    def add(self, record: UsageRecord) -> None:
        u = record.usage
        self.input += u.input_tokens
        self.output += u.output_tokens
        self.cached_input += u.cached_input_tokens
        self.cache_creation_input += u.cache_creation_input_tokens
        self.reasoning += u.reasoning_tokens
        self.calls += 1
        if record.cost_usd is None:
            self.unpriced_calls += 1
        else:
            self.cost_usd += record.cost_usd

    def copy(self) -> Spend:
        return Spend(**{f.name: getattr(self, f.name) for f in fields(self)})

    def wire(self) -> list[Any]:
        return [self.input, self.output, self.cached_input, self.cache_creation_input, self.reasoning,
                str(self.cost_usd), self.calls, self.unpriced_calls]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Spend:
        return cls(int(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]), int(raw[4]), Decimal(str(raw[5])),
                   int(raw[6]), int(raw[7]))


Key = tuple[str, str]  # (model, user); user "" for a budget without a per-User limit


class SpendCounters:
    """Per budget ("namespace/name") and (model, user): cumulative `Spend`. Pure; persisted via wire()."""

    def __init__(self, *, max_models: int = 10, max_users: int = 25) -> None:
        self.max_models = max_models
        self.max_users = max_users
        self.budgets: dict[str, dict[Key, Spend]] = {}

    def add(self, record: UsageRecord, per_user: Callable[[str], bool]) -> None:
        """Count one new record against every budget it names, unless it was refused (nothing was spent)."""
        if record.outcome is Outcome.REFUSED:
            return
        for budget in dict.fromkeys(record.budgets):
            rows = self.budgets.setdefault(budget, {})
            user = (record.user or "anonymous") if per_user(budget) else ""
            rows.setdefault(self._key(rows, record.model, user), Spend()).add(record)

    def _key(self, rows: Mapping[Key, Spend], model: str, user: str) -> Key:
        if (model, user) in rows:
            return model, user
        models = {m for m, _ in rows}
        users = {u for _, u in rows}
        if model not in models and len(models - {OTHER}) >= self.max_models:
            model = OTHER
        if user and user not in users and len(users - {OTHER, ""}) >= self.max_users:
            user = OTHER
        return model, user

    def forget_budget(self, budget: str) -> None:
        """A deleted budget's series go away (Prometheus marks them stale); a re-created one starts at 0."""
        self.budgets.pop(budget, None)

    def snapshot(self) -> SpendCounters:
        """A copy for /metrics: what was committed, untouched by records added after it."""
        out = SpendCounters(max_models=self.max_models, max_users=self.max_users)
        out.budgets = {b: {k: s.copy() for k, s in rows.items()} for b, rows in self.budgets.items()}
        return out

    def wire(self) -> dict[str, list[list[Any]]]:
        return {b: [[m, u, *s.wire()] for (m, u), s in rows.items()] for b, rows in self.budgets.items()}

    def restore(self, raw: Mapping[str, Iterable[Sequence[Any]]]) -> None:
        self.budgets = {str(b): {(str(r[0]), str(r[1])): Spend.from_wire(r[2:]) for r in rows}
                        for b, rows in raw.items()}


class SpendCollector(Collector):
    """The committed counters at scrape time, or nothing while this replica does not reconcile."""

    def __init__(self, source: Callable[[], SpendCounters | None]) -> None:
        self.source = source

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())  # unchecked: the families depend on the state at scrape time

    def collect(self) -> Iterator[CounterMetricFamily]:
        tokens = CounterMetricFamily(
            "tokenbudget_spend_tokens", "Tokens counted against a budget (committed usage; input + output is "
            "every token).", labels=[*LABELS, "gen_ai_token_type"])
        details = CounterMetricFamily(
            "tokenbudget_spend_token_details", "Parts of the input and output tokens: cached_input and "
            "cache_creation_input (of input), reasoning (of output).", labels=[*LABELS, "gen_ai_token_type"])
        cost = CounterMetricFamily("tokenbudget_spend_cost_usd", "Dollars counted against a budget (priced calls).",
                                   labels=list(LABELS))
        calls = CounterMetricFamily("tokenbudget_spend_calls", "Calls counted against a budget (not refused).",
                                    labels=list(LABELS))
        unpriced = CounterMetricFamily("tokenbudget_spend_unpriced_calls", "Calls to a model with no known "
                                       "price: their dollars are missing from tokenbudget_spend_cost_usd.",
                                       labels=list(LABELS))
        counters = self.source()
        for budget, rows in sorted((counters.budgets if counters else {}).items()):
            namespace = budget.partition("/")[0]
            for (model, user), s in sorted(rows.items()):
                labels = [namespace, budget, model, user]
                tokens.add_metric([*labels, "input"], s.input)
                tokens.add_metric([*labels, "output"], s.output)
                for kind in DETAIL_TYPES:
                    details.add_metric([*labels, kind], getattr(s, kind))
                cost.add_metric(labels, float(s.cost_usd))
                calls.add_metric(labels, s.calls)
                unpriced.add_metric(labels, s.unpriced_calls)
        yield from (tokens, details, cost, calls, unpriced)


__all__ = ["DETAIL_TYPES", "LABELS", "OTHER", "TOKEN_TYPES", "Spend", "SpendCollector", "SpendCounters"]
