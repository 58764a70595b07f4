"""The spend counters the operator exports for Prometheus: each record once, per budget, model and (for
per-User budgets) user, bounded, and the same after a restart as before it (spend.py)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tokenbudget_api.usage import Outcome, Usage, UsageRecord
from tokenbudget_operator.reconciler.aggregate import Aggregator
from tokenbudget_operator.reconciler.spend import OTHER, SpendCollector, SpendCounters

T0 = dt.datetime(2026, 12, 6, 9, tzinfo=dt.UTC)
A, B = "team/a", "team/b"


def rec(seq: int, *, model: str = "gpt-4o", user: str | None = None, budgets: tuple[str, ...] = (A,),
        cost: str | None = "0.25", outcome: Outcome = Outcome.OK) -> UsageRecord:
    return UsageRecord(seq=seq, request_id=f"r{seq}", time=T0, upstream="openai", dialect="openai", operation="chat",
                       model=model, user=user, outcome=outcome, budgets=list(budgets),
                       usage=Usage(input_tokens=100, cached_input_tokens=40, output_tokens=30, reasoning_tokens=10),
                       cost_usd=None if cost is None else Decimal(cost))


def scrape(counters: SpendCounters | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What Prometheus would store: (sample name, sorted labels) → value; an empty label is no label."""
    registry = CollectorRegistry()
    registry.register(SpendCollector(lambda: counters))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(budget: str = "a", model: str = "gpt-4o", **extra: str) -> tuple[tuple[str, str], ...]:
    found = {"namespace": "team", "budget": f"team/{budget}", "gen_ai_request_model": model, **extra}
    return tuple(sorted(found.items()))


def test_each_record_counts_once_per_budget_it_names_and_refusals_count_nothing() -> None:
    agg = Aggregator()
    records = [rec(1), rec(2, budgets=(A, B)), rec(3, outcome=Outcome.REFUSED), rec(4, cost=None)]
    assert agg.add("pod-1", records) == 4
    assert agg.add("pod-1", records) == 0  # a retried pull: the cursor drops every record
    got = scrape(agg.spend)
    assert got["tokenbudget_spend_tokens_total", labels(gen_ai_token_type="input")] == 300
    assert got["tokenbudget_spend_tokens_total", labels(gen_ai_token_type="output")] == 90
    assert got["tokenbudget_spend_token_details_total", labels(gen_ai_token_type="cached_input")] == 120
    assert got["tokenbudget_spend_token_details_total", labels(gen_ai_token_type="reasoning")] == 30
    assert got["tokenbudget_spend_calls_total", labels()] == 3
    assert got["tokenbudget_spend_unpriced_calls_total", labels()] == 1
    assert got["tokenbudget_spend_cost_usd_total", labels()] == 0.5
    assert got["tokenbudget_spend_calls_total", labels("b")] == 1
    assert got["tokenbudget_spend_tokens_total", labels("b", gen_ai_token_type="input")] == 100


def test_only_per_user_budgets_carry_a_user_and_both_labels_are_bounded() -> None:
    spend = SpendCounters(max_models=2, max_users=2)
    per_user = {A}.__contains__
    for i, (model, user) in enumerate([("m1", "ann"), ("m2", "bob"), ("m3", "cy"), ("m1", "dee"), ("m2", None)]):
        spend.add(rec(i + 1, model=model, user=user, budgets=(A, B)), per_user)
    # Two users and two models get series; later ones (an anonymous call too) are folded into OTHER.
    assert sorted(spend.budgets[A]) == sorted([("m1", "ann"), ("m2", "bob"), (OTHER, OTHER), ("m1", OTHER),
                                               ("m2", OTHER)])
    # Budget B has no per-User limit: no user label at all, only the model (m3 folded past two models).
    assert sorted(spend.budgets[B]) == sorted([("m1", ""), ("m2", ""), (OTHER, "")])
    assert spend.budgets[B]["m1", ""].calls == 2
    # A key keeps its own series once it has one, so every series only grows.
    spend.add(rec(9, model="m1", user="ann"), per_user)
    assert spend.budgets[A]["m1", "ann"].calls == 2
    assert ("tokenbudget_spend_calls_total", labels("b", "m1")) in scrape(spend)


def test_a_restart_shows_the_committed_counters_unchanged_and_nothing_uncommitted() -> None:
    first = Aggregator()
    first.add("pod-1", [rec(1), rec(2, model="gpt-4o-mini")])
    committed = json.loads(json.dumps(first.state()))  # the ConfigMap write
    shown = scrape(first.spend.snapshot())
    first.add("pod-1", [rec(3)])  # pulled, never committed: the operator dies here

    second = Aggregator()
    second.restore(committed)
    assert scrape(second.spend) == shown  # the same series at the same values: Prometheus sees no reset
    # The uncommitted record is pulled again (its cursor was not committed) and counted once.
    assert second.add("pod-1", [rec(1), rec(2, model="gpt-4o-mini"), rec(3)]) == 1
    assert scrape(second.spend)["tokenbudget_spend_calls_total", labels()] == 2


def test_a_state_from_before_the_counters_starts_them_at_zero_and_a_deleted_budget_drops_its_series() -> None:
    agg = Aggregator()
    agg.add("pod-1", [rec(1)])
    old = agg.state()
    del old["spend"]
    restored = Aggregator()
    restored.restore(old)
    assert restored.spend.budgets == {}
    agg.forget_budget(A)
    assert not [k for k in scrape(agg.spend) if k[0].startswith("tokenbudget_spend_")]


def test_a_replica_that_does_not_reconcile_shows_no_spend_series() -> None:
    agg = Aggregator()
    agg.add("pod-1", [rec(1)])
    assert scrape(agg.spend)
    assert scrape(None) == {}
