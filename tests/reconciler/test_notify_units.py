"""Notifications without a control plane: what a target is owed (stage changes, end-of-period summaries), the
record that keeps it from being sent twice, both payload formats, and delivery with retries against a real
aiohttp receiver on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from test_aggregate import rec, view, wire

from tokenbudget_api import names
from tokenbudget_api.notifications import NotificationFormat, NotificationPayload, NotificationStatus
from tokenbudget_operator.reconciler.aggregate import Aggregator
from tokenbudget_operator.reconciler.indexes import BudgetEntry
from tokenbudget_operator.reconciler.notify_messages import body
from tokenbudget_operator.reconciler.notify_send import Backoff, SecretProblem, deliver, webhook_url
from tokenbudget_operator.reconciler.notify_state import Notifier, Observed, TargetState, pending

UTC = dt.UTC
DAY_START = dt.datetime(2026, 12, 5, tzinfo=UTC)
DELAY = dt.timedelta(seconds=30)
SPEC = {"timeZone": "UTC",
        "limits": [{"name": "daily", "period": "Day", "tokens": 1000}, {"name": "burst", "duration": "5m",
                                                                         "requests": 10}],
        "ladder": [{"at": 50, "action": "Alert"}, {"at": 95, "action": "Block"}],
        "notifications": [{"name": "slack", "urlSecretKey": "slack"},
                          {"name": "finops", "urlSecretKey": "finops", "format": "Json", "events": ["PeriodEnded"]}]}


def entry(notifications: tuple[dict[str, Any], ...] = ()) -> BudgetEntry:
    return BudgetEntry(view(SPEC), notifications=notifications)


def owed(notifier: Notifier, target: int, agg: Aggregator, now: dt.datetime) -> list[Any]:
    e = entry()
    state = notifier.states(e, now)[e.view.spec.notifications[target].name]  # type: ignore[index]
    return pending(e.view, e.view.spec.notifications[target], state,  # type: ignore[index]
                   notifier.observed.get(e.view.key), agg.period_totals, now, DELAY)


def deliver_all(notifier: Notifier, target: str, items: list[Any]) -> None:
    for item in items:
        notifier.targets[entry().view.key][target] = item.after


def test_a_stage_change_is_owed_once_and_its_key_is_the_same_until_it_is_delivered() -> None:
    notifier, agg = Notifier(), Aggregator()
    now = DAY_START + dt.timedelta(hours=3)
    notifier.states(entry(), now)
    assert owed(notifier, 0, agg, now) == []  # Normal, as a new target starts
    notifier.observe(entry().view.key, {"stage": "Alert", "tightestWindow": "daily", "usedPercent": 62})
    first = owed(notifier, 0, agg, now)
    again = owed(notifier, 0, agg, now + dt.timedelta(seconds=5))
    assert [p.payload.idempotency_key for p in first] == [p.payload.idempotency_key for p in again] == [
        "uid-b/slack/stage/1/Normal-Alert"]
    assert first[0].payload.stage.window == "daily"
    assert owed(notifier, 1, agg, now) == []  # finops wants summaries only
    deliver_all(notifier, "slack", first)
    assert owed(notifier, 0, agg, now) == []
    notifier.observe(entry().view.key, {"stage": "Normal", "tightestWindow": "daily", "usedPercent": 10})
    back = owed(notifier, 0, agg, now)
    assert back[0].payload.idempotency_key == "uid-b/slack/stage/2/Alert-Normal"


def test_the_record_survives_a_round_trip_through_status_so_a_restart_owes_nothing() -> None:
    notifier, agg = Notifier(), Aggregator()
    now = DAY_START + dt.timedelta(hours=3)
    notifier.observe(entry().view.key, {"stage": "Block", "tightestWindow": "daily", "usedPercent": 99})
    deliver_all(notifier, "slack", owed(notifier, 0, agg, now))
    stored = notifier.status_of(entry(), now)
    assert stored is not None
    for raw in stored:
        NotificationStatus.model_validate(raw)  # what the CRD accepts
    restarted = Notifier()  # a new process: seeded from status alone
    restarted.observe(entry().view.key, {"stage": "Block", "tightestWindow": "daily", "usedPercent": 99})
    e = entry(tuple(stored))
    state = restarted.states(e, now)["slack"]
    assert (state.stage, state.sequence) == ("Block", 1)
    assert pending(e.view, e.view.spec.notifications[0], state,  # type: ignore[index]
                   restarted.observed[e.view.key], agg.period_totals, now, DELAY) == []


def test_a_day_that_ended_is_summarized_once_after_the_delay_with_its_own_figures() -> None:
    notifier, agg = Notifier(), Aggregator()
    seen = DAY_START + dt.timedelta(hours=1)
    notifier.states(entry(), seen)  # first sight: summaries of periods ending from now on
    agg.add("pod-a", wire(rec(1, seen, 300, cost="0.50"), rec(2, seen + dt.timedelta(hours=20), 400, cost="0.25"),
                          rec(3, DAY_START + dt.timedelta(days=1, seconds=5), 50, cost="0.01")), pod_name="chat-a")
    next_day = DAY_START + dt.timedelta(days=1)
    assert owed(notifier, 1, agg, next_day + dt.timedelta(seconds=10)) == []  # within the delay: late usage may come
    items = owed(notifier, 1, agg, next_day + dt.timedelta(seconds=40))
    assert len(items) == 1  # the rolling window is never summarized
    summary = items[0].payload.summary
    assert (summary.window, summary.period_start, summary.period_end) == ("daily", DAY_START, next_day)
    assert (summary.used, summary.limit, summary.percent, summary.unit) == ("700", "1000", 70, "Tokens")
    assert (summary.tokens, summary.cost_usd, summary.requests) == (700, Decimal("0.75"), 2)
    assert items[0].payload.idempotency_key == "uid-b/finops/period/daily/2026-12-05T00:00:00+00:00"
    assert items[0].payload.text == ("TokenBudget default/b: daily period 2026-12-05 00:00 - 2026-12-06 00:00 UTC "
                                     "ended at 700 tokens of 1,000 tokens (70%); 700 tokens, $0.7500 in 2 calls")
    deliver_all(notifier, "finops", items)
    assert owed(notifier, 1, agg, next_day + dt.timedelta(hours=5)) == []


def test_both_formats_carry_the_same_message_and_key() -> None:
    notifier, agg = Notifier(), Aggregator()
    now = DAY_START + dt.timedelta(hours=3)
    notifier.observe(entry().view.key, {"stage": "Alert", "tightestWindow": "daily", "usedPercent": 62})
    payload = owed(notifier, 0, agg, now)[0].payload
    slack = body(payload, NotificationFormat.SLACK)
    assert set(slack) == {"text", "blocks"}
    assert slack["text"] == ":warning: TokenBudget default/b: ladder stage Normal -> Alert (window daily at 62%)"
    assert payload.idempotency_key in slack["blocks"][1]["elements"][0]["text"]
    generic = body(payload, NotificationFormat.JSON)
    assert generic["stage"] == {"from": "Normal", "to": "Alert", "window": "daily", "usedPercent": 62}
    assert NotificationPayload.model_validate(generic) == payload


def test_a_missing_secret_or_key_or_a_non_url_is_named() -> None:
    with pytest.raises(SecretProblem, match="tokenbudget-notifications does not exist"):
        webhook_url(None, "team", "slack")
    with pytest.raises(SecretProblem, match="has no key slack"):
        webhook_url({"other": "https://x"}, "team", "slack")
    with pytest.raises(SecretProblem, match="is not an http"):
        webhook_url({"slack": "hooks.slack.com/x"}, "team", "slack")
    assert webhook_url({"slack": "https://hooks.example.com/x"}, "team", "slack") == "https://hooks.example.com/x"


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after_within_it() -> None:
    backoff = Backoff(attempts=5, first_s=0.5, max_s=4.0)
    assert [backoff.delay(n, None) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay(1, "3") == 3.0
    assert backoff.delay(1, "3600") == 4.0
    assert backoff.delay(2, "soon") == 1.0


async def _receiver(answers: list[int]) -> tuple[web.AppRunner, str, list[tuple[str, Any]]]:
    """A webhook receiver on loopback answering `answers` in turn (then 200); records (key, body)."""
    got: list[tuple[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((request.headers.get(names.IDEMPOTENCY_HEADER, ""), await request.json()))
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook/secret-part", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook/secret-part", got


@pytest.mark.parametrize(("answers", "ok", "attempts", "posts"), [
    ([500, 503], True, 3, 3),  # fails twice, gets it on the third POST
    ([429], True, 2, 2),
    ([500, 500, 500], False, 3, 3),  # retries exhausted
    ([400], False, 1, 1),  # a rejection a retry would only repeat
])
def test_delivery_retries_what_a_retry_can_fix_with_the_same_idempotency_key(
    answers: list[int], ok: bool, attempts: int, posts: int
) -> None:
    async def run() -> tuple[Any, list[tuple[str, Any]]]:
        runner, url, got = await _receiver(list(answers))
        try:
            async with aiohttp.ClientSession() as session:
                done = await deliver(session, url, {"text": "hi"}, "key-1",
                                     backoff=Backoff(attempts=3, first_s=0.01, max_s=0.05), timeout_s=5)
        finally:
            await runner.cleanup()
        return done, got

    done, got = asyncio.run(run())
    assert (done.ok, done.attempts) == (ok, attempts)
    assert len(got) == posts
    assert {key for key, _ in got} == {"key-1"}
    assert all(payload == {"text": "hi"} for _, payload in got)
    if not ok:
        assert done.error is not None
        assert done.error.startswith("HTTP")


def test_an_unreachable_receiver_is_reported_without_the_url() -> None:
    async def run() -> Any:
        async with aiohttp.ClientSession() as session:
            return await deliver(session, "http://127.0.0.1:9/hook/secret-part", {"text": "hi"}, "k",
                                 backoff=Backoff(attempts=2, first_s=0.01, max_s=0.01), timeout_s=2)

    done = asyncio.run(run())
    assert (done.ok, done.attempts) == (False, 2)
    assert "secret-part" not in (done.error or "")


def test_the_notifications_condition_names_the_target_in_trouble() -> None:
    notifier = Notifier()
    e = entry()
    states = notifier.states(e, DAY_START)
    ok = notifier.condition(e.view)
    assert ok is not None
    assert (ok.status.value, ok.reason) == ("True", "Delivering")
    states["slack"] = TargetState(problem=("NotificationSecretMissing", "Secret default/tokenbudget-notifications "
                                                                        "does not exist"))
    notifier.targets[e.view.key] = states
    bad = notifier.condition(e.view)
    assert bad is not None
    assert (bad.status.value, bad.reason) == ("False", "NotificationSecretMissing")
    assert bad.message.startswith("slack: Secret default/tokenbudget-notifications does not exist")
    assert notifier.condition(view({"timeZone": "UTC"})) is None  # no targets, no condition
    assert Observed("Normal", None, None).stage == "Normal"


def test_a_budget_re_created_under_the_same_name_starts_a_new_record() -> None:
    notifier, agg = Notifier(), Aggregator()
    now = DAY_START + dt.timedelta(hours=3)
    notifier.observe(entry().view.key, {"stage": "Alert", "tightestWindow": "daily", "usedPercent": 62})
    deliver_all(notifier, "slack", owed(notifier, 0, agg, now))
    assert notifier.states(entry(), now)["slack"].stage == "Alert"
    again = BudgetEntry(dataclasses.replace(view(SPEC), uid="uid-new"))
    assert notifier.states(again, now)["slack"].stage is None  # its first Alert is news again
