"""Waste features and insights of a golden workload run through the official openai SDK: each per-call
feature, each insight of the budget's status and the outcome figures equal what the workload was built with;
no record, log line, status or metric holds a word of the prompts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import prometheus_client
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from golden_workload import SECRET_WORDS, SYSTEM_TEXT, Expected, run
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.insights import InsightsStatus
from tokenbudget_api.usage import UsageRecord
from tokenbudget_operator.reconciler import insight_signals
from tokenbudget_operator.reconciler.insights import InsightBook

BUDGET = "default/team"
MILLION = Decimal(1_000_000)
INPUT, CACHED, OUTPUT = Decimal("2"), Decimal("0.5"), Decimal("8")  # the override's $ per million


@pytest.fixture(scope="module")
def golden() -> Iterator[tuple[Stack, Expected, list[UsageRecord]]]:
    prices = [{"model": "gpt-4o", "inputPerMillion": str(INPUT), "outputPerMillion": str(OUTPUT),
               "cachedInputPerMillion": str(CACHED)}]
    with stack(budgets=[{"namespace": "default", "name": "team", "spec": {"selector": {}, "insights": {}}}],
               prices=prices) as s:
        expected = run(s.openai_url, s.sidecar)
        yield s, expected, s.records(8)


def metered(records: list[UsageRecord]) -> list[UsageRecord]:
    return [r for r in records if r.operation != "outcome"]


def test_golden_workload_features_equal_their_known_values(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    _, expected, records = golden
    calls = metered(records)
    f = [r.features for r in calls if r.features is not None]
    assert len(f) == len(calls) == 8 - 1  # the 429 attempt and its retry are two calls; the report is none
    assert [x.prompt_tokens for x in f] == expected.prompt
    assert [x.repeated_tokens for x in f] == expected.repeated
    assert [r.usage.cached_input_tokens for r in calls] == expected.cached
    assert [x.cacheable_tokens for x in f] == expected.cacheable
    assert [x.cache_miss_tokens for x in f] == expected.miss
    assert [x.tool_output_tokens for x in f] == expected.tool
    assert [x.growth_tokens for x in f] == expected.growth
    assert [x.retry for x in f] == expected.retry
    assert [r.status for r in calls] == [200, 200, 200, 200, 429, 200, 200]
    ids = [x.conversation for x in f]
    assert [ids.index(i) for i in ids] == [{"A": 0, "B": 3, "C": 6}[c] for c in expected.conversation]
    assert [x.turn for x in f] == [1, 2, 3, 1, 2, 2, 1]
    for x, r in zip(f, calls, strict=True):
        cached = min(x.repeated_tokens, r.usage.cached_input_tokens)
        billed = r.usage.total_tokens > 0
        assert x.repeated_usd == ((x.repeated_tokens - cached) * INPUT + cached * CACHED) / MILLION if billed \
            else x.repeated_usd is None
        assert x.cache_miss_usd == (x.cache_miss_tokens * (INPUT - CACHED) / MILLION if billed else None)
    assert all(len(h) == 16 for x in f for h in x.context_hashes)
    assert f[1].context_hashes[:2] == f[0].context_hashes  # the same leading context hashes the same


def test_acceptance_reports_close_each_conversations_spend(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    _, expected, records = golden
    calls = metered(records)
    reports = [r.accepted for r in records if r.accepted is not None]
    assert len(reports) == 2
    assert records[3].accepted is not None  # carried by the call whose header named A's answer
    assert records[6].operation == "outcome"
    assert records[6].budgets == []  # a report counts against no budget's windows
    for report, indexes in zip(reports, expected.accepted, strict=True):
        assert report.budgets == [BUDGET]
        assert report.calls == len(indexes)
        assert report.tokens == sum(calls[i].usage.total_tokens for i in indexes)
        assert report.cost_usd == sum((calls[i].cost_usd or Decimal(0) for i in indexes), Decimal(0))
        assert report.response_id == calls[indexes[-1]].response_id


def insights_of(records: list[UsageRecord]) -> dict[str, object]:
    book = InsightBook()
    for r in records:
        book.add(r)
    status = book.status(BUDGET, max(r.time for r in records))
    assert status is not None
    InsightsStatus.model_validate(status)  # the CRD's shape
    return status


def test_golden_workload_insights_equal_their_known_values(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    _, e, records = golden
    calls = metered(records)
    billed = [i for i, r in enumerate(calls) if r.usage.total_tokens > 0]
    status = insights_of(records)
    items = {i["name"]: i for i in status["items"]}  # type: ignore[attr-defined]
    prompt = sum(e.prompt[i] for i in billed)
    cost = sum((r.cost_usd or Decimal(0) for r in calls), Decimal(0))
    assert status["calls"] == 7
    assert status["inputTokens"] == prompt
    assert Decimal(str(status["costUSD"])) == cost
    repeated = sum(e.repeated[i] for i in billed)
    assert items["RepeatedContext"]["percent"] == repeated * 100 // prompt
    assert items["RepeatedContext"]["tokens"] == repeated
    miss, cacheable = sum(e.miss), sum(e.cacheable)
    assert items["CacheMiss"]["percent"] == miss * 100 // cacheable
    assert Decimal(items["CacheMiss"]["costUSD"]) == miss * (INPUT - CACHED) / MILLION
    assert items["Retry"]["percent"] == 1 * 100 // 7
    assert items["Retry"]["costPercent"] == int(calls[5].cost_usd * 100 / cost)  # type: ignore[operator]
    assert items["ToolOutput"]["tokens"] == e.tool[5]  # the 429 attempt (e.tool[4]) was never billed
    assert items["ToolOutput"]["percent"] == e.tool[5] * 100 // prompt
    growths = sorted(g for g in e.growth if g is not None)
    growth = status["inputGrowth"]
    assert growth["turns"] == 3  # type: ignore[index]
    # Quantiles come from a log histogram (api/tokenbudget_api/sketch.py) of 2% relative accuracy.
    assert abs(growth["p50Tokens"] - growths[1]) <= growths[1] * 2 / 100  # type: ignore[index]
    assert abs(growth["p95Tokens"] - growths[2]) <= growths[2] * 2 / 100  # type: ignore[index]
    accepted_cost = sum((calls[i].cost_usd or Decimal(0) for ix in e.accepted for i in ix), Decimal(0))
    outcomes = status["outcomes"]
    assert outcomes["accepted"] == 2  # type: ignore[index]
    assert Decimal(outcomes["costPerAcceptedUSD"]) == (cost / 2).quantize(Decimal("0.000001"))  # type: ignore[index]
    assert outcomes["tokensPerAccepted"] == sum(r.usage.total_tokens for r in calls) // 2  # type: ignore[index]
    assert outcomes["unacceptedSpendPercent"] == int((cost - accepted_cost) * 100 / cost)  # type: ignore[index]
    dollars = [Decimal(i.get("costUSD", "0")) for i in status["items"]]  # type: ignore[attr-defined]
    assert dollars == sorted(dollars, reverse=True)  # worst first


def test_without_acceptance_reports_outcomes_are_absent_not_zero(
        golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    _, _, records = golden
    without = [r.model_copy(update={"accepted": None}) for r in metered(records)]
    status = insights_of(without)
    assert "outcomes" not in status
    assert "UnacceptedSpend" not in {i["name"] for i in status["items"]}  # type: ignore[attr-defined]


def test_a_threshold_crossed_turns_the_waste_condition_true(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    from tokenbudget_api.insights import InsightThresholds

    status = insights_of(golden[2])
    now = dt.datetime.now(dt.UTC)
    (low,) = insight_signals.waste_condition([], status, InsightThresholds(repeated_context_percent=60),
                                             generation=1, now=now)
    assert low["status"] == "True"
    assert low["reason"] == "RepeatedContextAboveThreshold"
    (high,) = insight_signals.waste_condition([low], status, InsightThresholds(repeated_context_percent=99),
                                              generation=1, now=now)
    assert (high["status"], high["reason"]) == ("False", "WithinThresholds")
    assert insight_signals.turned_true([], [low]) is low
    assert insight_signals.turned_true([low], [low]) is None


def test_no_record_log_line_status_or_metric_holds_prompt_text(
        golden: tuple[Stack, Expected, list[UsageRecord]], caplog: pytest.LogCaptureFixture) -> None:
    s, _, records = golden
    with caplog.at_level(logging.INFO):
        s.state.usage_log.ack(s.state.usage_log.last_seq)
        run(s.openai_url, s.sidecar)
        more = s.records(8)
    status = insights_of(records)
    insight_signals.export("default", "team", status)
    texts = [json.dumps([r.model_dump(mode="json") for r in [*records, *more]]), json.dumps(status),
             prometheus_client.generate_latest().decode(), http_get(f"{s.admin}/metrics"), caplog.text]
    assert caplog.text, "the sidecar's log lines were captured"
    for text in texts:
        for word in SECRET_WORDS:
            assert word not in text
        assert SYSTEM_TEXT[:40] not in text


def test_insight_sums_survive_the_usage_state_round_trip(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    from tokenbudget_operator.reconciler.aggregate import Aggregator

    records = golden[2]
    agg = Aggregator()
    agg.add("pod-uid", records, pod_name="p")
    state = json.loads(json.dumps(agg.state()))
    again = Aggregator()
    again.restore(state)
    now = max(r.time for r in records)
    status = agg.insights.status(BUDGET, now)
    assert status is not None
    assert again.insights.status(BUDGET, now) == status
    assert {k: v for k, v in status.items() if k != "consumers"} == insights_of(records)
    assert again.add("pod-uid", records, pod_name="p") == 0  # the cursor came back with them: nothing twice
    assert again.insights.status(BUDGET, now) == status


def test_waste_is_broken_down_per_pod_and_user(golden: tuple[Stack, Expected, list[UsageRecord]]) -> None:
    from tokenbudget_operator.reconciler.aggregate import Aggregator

    _, e, records = golden
    calls = metered(records)
    agg = Aggregator()
    agg.add("uid-a", [r.model_copy(update={"user": "alice" if i < 3 else None}) for i, r in enumerate(records)],
            pod_name="chat-a")
    status = agg.insights.status(BUDGET, max(r.time for r in records))
    assert status is not None
    InsightsStatus.model_validate(status)
    pod, user = status["consumers"]
    billed = [i for i, r in enumerate(calls) if r.usage.total_tokens > 0]
    assert (pod["kind"], pod["name"], pod["calls"], pod["retryCalls"]) == ("Pod", "chat-a", 7, 1)
    assert pod["repeatedPercent"] == sum(e.repeated[i] for i in billed) * 100 // sum(e.prompt[i] for i in billed)
    assert Decimal(pod["repeatedUSD"]) == sum((calls[i].features.repeated_usd for i in billed  # type: ignore[union-attr,misc]
                                               ), Decimal(0))
    assert (user["kind"], user["name"], user["calls"], user["retryCalls"]) == ("User", "alice", 3, 0)
    assert user["repeatedPercent"] == sum(e.repeated[:3]) * 100 // sum(e.prompt[:3])
