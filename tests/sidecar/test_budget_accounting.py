"""The accounting of budgets inside one sidecar: reservations, windows, the ladder, dry-run, leases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from budget_helpers import OPENAI, admission, at, call, record, run_call
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbudget_api.tokenbudget import Stage
from tokenbudget_api.windows import ManualClock
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.refusal_reasons import LEASE_ROUND_S

LADDER = [
    {"at": 50, "action": "Alert"},
    {"at": 80, "action": "Throttle", "maxRequestsPerMinute": 6000},
    {"at": 85, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini"}},
    {"at": 95, "action": "Block"},
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 200), st.booleans(), st.integers(0, 3)),
                min_size=1, max_size=40))
async def test_settled_totals_equal_provider_usage_and_nothing_goes_negative(
    ops: list[tuple[int, int, bool, int]],
) -> None:
    """Random calls: admit (maybe refused), settle with any usage up to the cap, sometimes let time pass."""
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "t", "period": "Hour", "tokens": 3000},
                                {"name": "r", "duration": "10m", "requests": 25}]}, clock)
    budget = adm.budgets[0]
    settled = Decimal(0)
    open_tickets = []
    for prompt, out, settle_now, minutes in ops:
        c, body = call(cap=200)
        try:
            ticket, _ = await adm.admit(OPENAI, c, body, "/v1/chat/completions", prompt, "http://x")
        except Refused:
            continue
        if settle_now:
            adm.settle(ticket, record(c, prompt, out, clock))
            settled += prompt + out
        else:
            open_tickets.append((ticket, c, prompt, out))
        for w in budget.windows.values():
            assert w.reserved >= 0
            assert w.used(clock.now()) >= 0
            assert w.used(clock.now()) + w.reserved <= w.amount(clock.now()), "holds never exceed the limit"
        clock.advance(dt.timedelta(seconds=minutes))
    for ticket, c, prompt, out in open_tickets:
        adm.settle(ticket, record(c, prompt, out, clock))
        adm.settle(ticket, record(c, prompt, out, clock))  # a second settle must be a no-op
        settled += prompt + out
    hour = budget.windows[("t", None)]
    assert hour.reserved == 0, "every reservation ended"
    assert budget.reservations == {}
    assert hour.used(clock.now()) == settled  # ops span < 1 h, all within one calendar hour
    assert budget.windows[("r", None)].reserved == 0


async def test_a_reservation_that_never_settles_expires_and_frees_the_budget() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "t", "period": "Day", "tokens": 1000}]}, clock)
    c, body = call(cap=900)
    await adm.admit(OPENAI, c, body, "/x", 50, "http://x")  # never settled
    with pytest.raises(Refused):
        await run_call(adm, clock, 50, 10, cap=900)
    clock.advance(dt.timedelta(hours=1, seconds=1))
    assert adm.expire() == 1
    await run_call(adm, clock, 50, 10, cap=900)


async def test_the_ladder_fires_in_order_and_dry_run_reports_the_same_decisions() -> None:
    async def workload(enforcement: str) -> list[str]:
        clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
        adm = admission({"enforcement": enforcement, "ladder": LADDER,
                         "limits": [{"name": "day", "period": "Day", "tokens": 2000}]}, clock)
        seen = []
        for _ in range(60):
            try:
                ticket, _ = await run_call(adm, clock, 30, 20, cap=20)
            except Refused as r:
                seen.append("Refused:" + ("Block" if "Block stage" in r.message else "limit"))
                continue
            seen.append(",".join(d.split(":", 1)[1].removeprefix("DryRun:") for d in ticket.decisions) or "-")
        assert adm.budgets[0].alerts[0].stage is Stage.ALERT
        return seen

    enforced = await workload("Enforce")
    dry = await workload("DryRun")
    # 50 tokens a call, 2000 a day: Alert from 50% (call 21), Throttle from 80% (33), Downgrade from 85%
    # (35), Block from 95% (39). The stage is checked before the call's own hold, so call 20 still runs.
    first = {label: next(i for i, s in enumerate(enforced) if label in s) for label in
             ("Throttle", "Downgrade", "Refused:Block")}
    assert first["Throttle"] < first["Downgrade"] < first["Refused:Block"]
    assert first == {"Throttle": 32, "Downgrade": 34, "Refused:Block": 38}
    assert all(s.startswith("Refused") for s in enforced[38:])
    # DryRun blocks nothing, yet flags Block from the same call the enforced run first refused.
    assert not any(s.startswith("Refused") for s in dry)
    assert "Block" in dry[38]
    assert "Block" not in dry[37]
    # A call it would have blocked would not also have been downgraded or throttled (enforcement refuses
    # first), and its would-have counts say so.
    assert {s for s in dry[38:]} == {"Block"}, dry[38:]


async def test_a_dry_run_counts_in_its_windows_only_what_enforcement_would_have_let_spend() -> None:
    """A call a DryRun budget would have refused is served but not counted in its windows, live and when
    its records are replayed after a restart, so its percent follows its enforcing twin's (and the calls it
    would have refused are the ones the twin refused) instead of running ahead of it."""
    spec = {"ladder": LADDER, "limits": [{"name": "day", "period": "Day", "tokens": 2000}]}
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    enforced, dry = admission(spec, clock), admission({**spec, "enforcement": "DryRun"}, clock)
    refused, would, records = [], [], []
    for i in range(60):
        prompt, out = 30 + i % 7, 20 + i % 5  # sizes vary, so the tail of the window is not all-or-nothing
        try:
            await run_call(enforced, clock, prompt, out, cap=20)
        except Refused:
            refused.append(i)
        c, body = call(cap=20)
        ticket, _ = await dry.admit(OPENAI, c, body, "/v1/chat/completions", prompt, "http://127.0.0.1")
        rec = record(c, prompt, out, clock)
        dry.settle(ticket, rec)
        records.append(rec)
        if any(d.endswith(":DryRun:Block") for d in ticket.decisions):
            would.append(i)
    assert refused
    assert would == refused
    used = [b.report().windows[0].used for b in (enforced.budgets[0], dry.budgets[0])]
    assert used[0] == used[1] < 2000
    assert dry.budgets[0].would_have["Block"].count == len(refused)
    replayed = admission({**spec, "enforcement": "DryRun"}, clock)
    replayed.replay(records)
    assert replayed.budgets[0].report().windows[0].used == used[1]


async def test_hysteresis_keeps_a_budget_hovering_at_a_threshold_from_flapping() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"ladder": LADDER[:2], "hysteresisPercent": 3,
                     "limits": [{"name": "m", "duration": "60s", "tokens": 1000}]}, clock)
    b = adm.budgets[0]
    (w,) = b.windows_for("gpt-4o", None)
    w.counter.add(800, clock.now())
    assert b.stage([w]) is Stage.THROTTLE
    clock.advance(dt.timedelta(seconds=61))
    w.counter.add(780, clock.now())  # 78%: below 80 but within 3 points
    assert b.stage([w]) is Stage.THROTTLE
    clock.advance(dt.timedelta(seconds=61))
    w.counter.add(760, clock.now())  # 76%: more than 3 points below
    assert b.stage([w]) is Stage.ALERT


async def test_a_day_window_resets_at_midnight_in_sydney_not_24_hours_after_first_use() -> None:
    clock = ManualClock(at("2026-11-23T23:59:50+11:00"))  # Sydney, daylight time
    adm = admission({"timeZone": "Australia/Sydney", "limits": [{"name": "day", "period": "Day", "tokens": 100}]},
                    clock)
    await run_call(adm, clock, 40, 30, cap=30)
    with pytest.raises(Refused) as refused:
        await run_call(adm, clock, 40, 30, cap=30)
    assert refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(10, abs=1)
    assert "frees up at 2026-11-23T13:00:00+00:00" in refused.value.message
    clock.advance(dt.timedelta(seconds=10))
    await run_call(adm, clock, 40, 30, cap=30)


async def test_a_day_window_on_the_dst_change_in_new_york_lasts_25_hours() -> None:
    clock = ManualClock(at("2026-11-01T00:30:00-04:00"))  # the day New York falls back
    adm = admission({"timeZone": "America/New_York", "limits": [{"name": "day", "period": "Day", "tokens": 100}]},
                    clock)
    await run_call(adm, clock, 60, 40, cap=40)
    (w,) = adm.budgets[0].windows_for("gpt-4o", None)
    resets = w.counter.resets_at(clock.now())
    assert resets is not None
    assert resets - w.counter.period_start(clock.now()) == dt.timedelta(hours=25)
    clock.set(resets - dt.timedelta(seconds=1))
    with pytest.raises(Refused):
        await run_call(adm, clock, 1, 1, cap=1)
    clock.set(resets)
    await run_call(adm, clock, 60, 40, cap=40)


async def test_per_user_limits_block_one_user_and_not_the_others() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "u", "period": "Day", "tokens": 100, "per": "User"}]}, clock)
    await run_call(adm, clock, 40, 40, cap=40, user="alice")
    with pytest.raises(Refused) as refused:
        await run_call(adm, clock, 40, 40, cap=40, user="alice")
    assert "u[alice]" in refused.value.message
    await run_call(adm, clock, 40, 40, cap=40, user="bob")


async def test_dollar_limits_reserve_at_list_price_and_refuse_unpriced_models() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    prices = [{"model": "qwen-max", "inputPerMillion": "1000", "outputPerMillion": "1000"}]
    adm = admission({"limits": [{"name": "usd", "period": "Day", "costUSD": "0.50"}]}, clock, prices=prices)
    c, body = call(model="qwen-max", cap=100)
    ticket, _ = await adm.admit(OPENAI, c, body, "/x", 200, "http://x")  # holds (200+100) * $0.001 = $0.30
    assert adm.budgets[0].windows[("usd", None)].reserved == Decimal("0.3")
    c2, body2 = call(model="qwen-max", cap=100)
    with pytest.raises(Refused):
        await adm.admit(OPENAI, c2, body2, "/x", 200, "http://x")
    adm.settle(ticket, record(c, 200, 10, clock, cost="0.21"))
    assert adm.budgets[0].windows[("usd", None)].used(clock.now()) == Decimal("0.21")
    c3, body3 = call(model="llama-local", cap=10)
    with pytest.raises(Refused) as unpriced:
        await adm.admit(OPENAI, c3, body3, "/x", 1, "http://x")
    assert unpriced.value.status == 400
    assert "no price" in unpriced.value.message


async def test_an_expired_lease_keeps_admitting_what_it_granted_then_fail_mode_decides() -> None:
    """An operator outage stops no call a grant covers (issue 13): only a spent, unrenewed grant asks failMode."""
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    lease = {"window": "day", "granted": "500", "periodStart": "2026-11-23T00:00:00+00:00",
             "expiresAt": "2026-11-23T10:05:00+00:00"}
    for mode, admitted_when_spent in (("Closed", False), ("Open", True)):
        pol = {"failMode": mode, "limits": [{"name": "day", "period": "Day", "tokens": 100000}]}
        adm = admission(pol, clock, leases=[lease])
        (w,) = adm.budgets[0].windows_for("gpt-4o", None)
        assert w.amount(clock.now()) == 500, "a leased window admits only against its lease"
        clock.set(at("2026-11-23T10:06:00+00:00"))  # expired: the operator is gone
        await run_call(adm, clock, 200, 200, cap=200)  # 400 of 500: still covered by the grant
        try:
            await run_call(adm, clock, 100, 100, cap=100)  # 200 more: beyond the grant
            ok = True
        except Refused as r:
            ok = False
            assert "lease of 500 is spent" in r.message
            assert r.retry_after == LEASE_ROUND_S
            assert (r.awaits_grant, r.budget) == (True, adm.budgets[0].name)  # lease starvation (a metric)
        assert ok is admitted_when_spent
        clock.set(at("2026-11-23T10:00:00+00:00"))


async def test_a_new_period_without_a_lease_follows_fail_mode() -> None:
    clock = ManualClock(at("2026-11-23T23:59:00+00:00"))
    lease = {"window": "day", "granted": "500", "periodStart": "2026-11-23T00:00:00+00:00",
             "expiresAt": "2026-11-24T00:05:00+00:00"}
    for mode, admitted in (("Closed", False), ("Open", True)):
        adm = admission({"failMode": mode, "limits": [{"name": "day", "period": "Day", "tokens": 100000}]}, clock,
                        leases=[lease])
        clock.set(at("2026-11-24T00:01:00+00:00"))
        try:
            await run_call(adm, clock, 10, 10)
            ok = True
        except Refused as r:
            ok = False
            assert "no lease for this period" in r.message
        assert ok is admitted
        clock.set(at("2026-11-23T23:59:00+00:00"))


async def test_a_leased_window_is_reported_before_its_first_call() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "day", "period": "Day", "tokens": 100000}]}, clock, leases=[{
        "window": "day", "granted": "700", "periodStart": "2026-11-23T00:00:00+00:00",
        "expiresAt": "2026-11-23T11:00:00+00:00"}])
    (w,) = adm.budgets[0].report().dump()["windows"]  # type: ignore[misc]
    assert w["limit"] == "700"
    assert w["lease"]["granted"] == "700"
    assert w["used"] == "0"


async def test_a_lease_without_key_on_a_per_user_limit_caps_every_user_separately() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "per-user", "period": "Day", "tokens": 100000, "per": "User"}]}, clock,
                    leases=[{"window": "per-user", "granted": "150", "periodStart": "2026-11-23T00:00:00+00:00",
                             "expiresAt": "2026-11-23T11:00:00+00:00"}])
    assert adm.budgets[0].report().dump()["windows"] == [], "the shared lease has no window of its own"
    await run_call(adm, clock, 60, 40, cap=40, user="alice")  # holds ≈ 60·1.1 + framing + 40
    with pytest.raises(Refused) as refused:
        await run_call(adm, clock, 60, 40, cap=40, user="alice")
    assert "per-user[alice]" in refused.value.message
    assert "of 150" in refused.value.message
    await run_call(adm, clock, 60, 40, cap=40, user="bob")  # bob has his own 150
    windows = {w["key"]: w for w in adm.budgets[0].report().dump()["windows"]}  # type: ignore[attr-defined]
    assert windows["alice"]["limit"] == windows["bob"]["limit"] == "150"
    assert windows["alice"]["lease"] | {"expiresAt": None} == {
        "granted": "150", "remaining": "50", "low": False, "expiresAt": None}


async def test_a_rolling_lease_is_a_level_that_frees_up_as_use_ages_out() -> None:
    clock = ManualClock(at("2026-11-23T10:00:00+00:00"))
    adm = admission({"limits": [{"name": "hour", "duration": "1h", "tokens": 100000}]}, clock,
                    leases=[{"window": "hour", "granted": "150", "expiresAt": "2026-11-23T12:00:00+00:00"}])
    await run_call(adm, clock, 60, 40, cap=40)
    clock.advance(dt.timedelta(minutes=30))
    with pytest.raises(Refused):
        await run_call(adm, clock, 60, 40, cap=40)
    clock.advance(dt.timedelta(minutes=31))  # the first call left the window: its 100 tokens are free again
    await run_call(adm, clock, 60, 40, cap=40)
    (w,) = adm.budgets[0].report().dump()["windows"]  # type: ignore[misc]
    assert (w["limit"], w["used"]) == ("150", "100"), "not stale although its bucket start moved"


async def test_the_next_periods_lease_takes_over_at_midnight_without_a_push() -> None:
    """The operator sends the next period's grant shortly before it starts: no refusal at the boundary."""
    clock = ManualClock(at("2026-11-23T23:59:58+00:00"))
    today = {"window": "day", "granted": "150", "periodStart": "2026-11-23T00:00:00+00:00",
             "expiresAt": "2026-11-24T00:00:30+00:00"}
    tomorrow = {**today, "granted": "300", "periodStart": "2026-11-24T00:00:00+00:00"}
    adm = admission({"limits": [{"name": "day", "period": "Day", "tokens": 100000}]}, clock, leases=[tomorrow, today])
    await run_call(adm, clock, 60, 40, cap=40)
    with pytest.raises(Refused):
        await run_call(adm, clock, 60, 40, cap=40)  # today's 150 is spent
    clock.set(at("2026-11-24T00:00:01+00:00"))
    for _ in range(2):
        await run_call(adm, clock, 60, 40, cap=40)  # tomorrow's 300, with no new policy
    (w,) = adm.budgets[0].report().dump()["windows"]  # type: ignore[misc]
    assert (w["limit"], w["used"], w["lease"]["granted"]) == ("300", "200", "300")
