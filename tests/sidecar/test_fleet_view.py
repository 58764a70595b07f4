"""A sidecar speaks of the budget, not of its lease: percent, stage and remaining from the fleet's figure,
and a Retry-After that names when the cause of a refusal clears (issue 13, parts 1, 5 and 7)."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from budget_helpers import OPENAI, admission, at, call, run_call
from sidecar_harness import stack

from tokenbudget_api.tokenbudget import Stage
from tokenbudget_api.windows import ManualClock
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.ladder import MAX_ALERTS
from tokenbudget_sidecar.refusal_reasons import HOLDS_SETTLE_S, LEASE_ROUND_S
from tokenbudget_sidecar.settings import Settings

T0 = at("2026-12-06T10:00:00+00:00")
DAY = T0.replace(hour=0)
LADDER = [{"at": 50, "action": "Alert"}, {"at": 80, "action": "Throttle", "maxRequestsPerMinute": 600},
          {"at": 95, "action": "Block"}]


def spec(tokens: int = 100_000) -> dict[str, Any]:
    return {"limits": [{"name": "day", "period": "Day", "tokens": tokens}], "ladder": LADDER, "timeZone": "UTC"}


def lease(granted: int, *, fleet: int | None = None, own: int = 0, start: dt.datetime = DAY) -> dict[str, Any]:
    out: dict[str, Any] = {"window": "day", "granted": str(granted), "periodStart": start.isoformat(),
                           "expiresAt": (T0 + dt.timedelta(minutes=1)).isoformat()}
    if fleet is not None:
        out |= {"fleetUsed": str(fleet), "ownUsed": str(own)}
    return out


async def test_a_pod_that_used_most_of_a_small_grant_is_normal_while_the_fleet_is_low() -> None:
    """The issue's example: 900 of a 1,000-token grant is 0.9 % of a 100,000-token budget, not Throttle."""
    clock = ManualClock(T0)
    adm = admission(spec(), clock, leases=[lease(1_000, fleet=0, own=0)])
    await run_call(adm, clock, 400, 500, cap=500)
    (b,) = adm.budgets
    (w,) = b.windows.values()
    assert w.percent(clock.now()) == 0  # 900 of 100,000
    assert b.stage() is Stage.NORMAL
    assert (b.report().windows[0].percent, b.report().stage) == (0, Stage.NORMAL)


async def test_the_fleet_figure_plus_own_use_since_the_round_drives_the_ladder_and_the_headers() -> None:
    clock = ManualClock(T0)
    # At the round the fleet had consumed 49,000 tokens, 1,000 of them this pod's.
    adm = admission(spec(), clock, leases=[lease(5_000, fleet=49_000, own=1_000)])
    await run_call(adm, clock, 600, 600, cap=600)  # this pod's 1,200 tokens since the round
    (b,) = adm.budgets
    (w,) = b.windows.values()
    assert w.budget_used(clock.now()) == Decimal(48_000 + 1_200)
    assert w.percent(clock.now()) == 49
    assert b.stage() is Stage.NORMAL
    ticket, _ = await run_call(adm, clock, 500, 500, cap=500)
    assert ticket.headers["x-tokenbudget-stage"] == "Alert"  # its own hold took the fleet to 50 %
    assert w.percent(clock.now()) == 50
    assert b.stage() is Stage.ALERT
    # with its own hold of 1,000:
    assert ticket.headers["x-tokenbudget-remaining"] == f"{b.name}/day={100_000 - 48_000 - 1_200 - 1_000}"


async def test_a_new_pod_with_a_zero_grant_is_normal_when_the_fleet_is() -> None:
    clock = ManualClock(T0)
    adm = admission(spec(), clock, leases=[lease(0, fleet=10_000, own=0)])
    (b,) = adm.budgets
    assert b.stage() is Stage.NORMAL
    assert list(b.alerts) == []
    assert b.report().windows[0].percent == 10


async def test_without_fleet_figures_a_sidecar_counts_only_itself_against_the_whole_limit() -> None:
    """An operator that sends none (or a standalone policy): own use over the limit, never over the grant."""
    clock = ManualClock(T0)
    adm = admission(spec(10_000), clock, leases=[lease(1_000)])
    await run_call(adm, clock, 400, 500, cap=500)
    (w,) = adm.budgets[0].windows.values()
    assert w.percent(clock.now()) == 9


async def test_a_fleet_figure_of_another_period_is_ignored() -> None:
    clock = ManualClock(T0)
    yesterday = lease(1_000, fleet=90_000, own=0, start=DAY - dt.timedelta(days=1))
    adm = admission(spec(), clock, leases=[yesterday])
    (w,) = adm.budgets[0].windows_for("gpt-4o", None)
    assert w.budget_used(clock.now()) == 0


@pytest.mark.parametrize(("cause", "expected"), [
    ("holds", HOLDS_SETTLE_S),  # calls in flight hold the room: it comes back as they settle
    ("grant", LEASE_ROUND_S),  # the budget has room, this pod's grant has not: the next lease round
    ("window", 14 * 3600.0),  # the day's use is spent: the day's end, 14 h after 10:00
])
async def test_retry_after_names_when_the_cause_clears(cause: str, expected: float) -> None:
    clock = ManualClock(T0)
    if cause == "holds":
        adm = admission(spec(1_000), clock)
        c, body = call(cap=600)
        await adm.admit(OPENAI, c, body, "/v1/chat/completions", 100, "http://127.0.0.1")  # holds 700 of 1,000
    elif cause == "grant":
        adm = admission(spec(100_000), clock, leases=[lease(1_000, fleet=1_000, own=0)])
        await run_call(adm, clock, 400, 500, cap=500)
    else:
        adm = admission(spec(1_000), clock)
        await run_call(adm, clock, 400, 500, cap=500)
    c, body = call(cap=400)
    with pytest.raises(Refused) as refused:
        await adm.admit(OPENAI, c, body, "/v1/chat/completions", 100, "http://127.0.0.1")
    assert refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(expected)
    # Only a grant short of a budget with room is lease starvation (tokenbudget_lease_starved_calls_total).
    assert refused.value.awaits_grant is (cause == "grant")
    assert refused.value.budget == adm.budgets[0].name


async def test_a_call_larger_than_the_limit_itself_gets_no_retry_after() -> None:
    clock = ManualClock(T0)
    adm = admission(spec(1_000), clock)
    c, body = call(cap=5_000)
    with pytest.raises(Refused) as refused:
        await adm.admit(OPENAI, c, body, "/v1/chat/completions", 100, "http://127.0.0.1")
    assert refused.value.retry_after is None


async def test_the_alert_list_is_bounded() -> None:
    clock = ManualClock(T0)
    adm = admission({**spec(100), "hysteresisPercent": 0}, clock)
    (b,) = adm.budgets
    for _ in range(MAX_ALERTS + 5):  # each window crossing 50 % then resetting adds an alert
        await run_call(adm, clock, 30, 30, cap=30)
        clock.advance(dt.timedelta(days=1))
    assert len(b.alerts) == MAX_ALERTS


def test_an_unsettled_hold_is_released_by_the_running_sidecar_after_its_ttl() -> None:
    """The reservation safety net runs in production, not only when a test calls expire()."""
    settings = Settings(data_port=0, admin_port=0, reservation_ttl_s=0.4)
    budget = {"name": "b", "spec": {"selector": {}, **spec(1_000)}}
    with stack(settings, budgets=[budget]) as s:
        adm = s.state.admission
        c, body = call(cap=400)
        loop = asyncio.new_event_loop()
        try:
            ticket, _ = loop.run_until_complete(
                adm.admit(OPENAI, c, body, "/v1/chat/completions", 100, "http://127.0.0.1"))
        finally:
            loop.close()
        (b,) = adm.budgets
        assert b.reservations, "the hold is in place"
        deadline = dt.datetime.now() + dt.timedelta(seconds=5)
        while b.reservations and dt.datetime.now() < deadline:
            asyncio.run(asyncio.sleep(0.05))
        assert not b.reservations, "the hold outlived its ttl"
        assert ticket.holds  # nobody settled it: only the timer could release it


def test_the_standalone_admin_port_binds_to_loopback_by_default() -> None:
    assert Settings().admin_host == "127.0.0.1"


async def test_a_budget_can_require_an_output_cap_and_rejects_uncapped_calls_naming_the_field() -> None:
    """Issue 13 part 6: with no cap the hold is a guess, so a budget may refuse to guess."""
    clock = ManualClock(T0)
    adm = admission({**spec(), "request": {"uncappedOutput": "Reject"}}, clock)
    c, body = call(cap=None)
    with pytest.raises(Refused) as refused:
        await adm.admit(OPENAI, c, body, "/v1/chat/completions", 10, "http://127.0.0.1")
    assert refused.value.status == 400
    assert "set max_completion_tokens" in refused.value.message
    await run_call(adm, clock, 10, 10, cap=50)  # a capped call is admitted
    held = admission(spec(), clock)  # the default: hold the sidecar's default allowance
    ticket, _ = await run_call(held, clock, 10, 10, cap=None)
    assert ticket.headers["x-tokenbudget-reserved-tokens"] == str(10 + 100)


@pytest.mark.parametrize(("pods", "interval"), [(None, 0.5), (1, 0.5), (4, 2.0)])
async def test_a_throttle_rate_is_the_budgets_split_between_the_pods_it_selects(pods: int | None,
                                                                               interval: float) -> None:
    """Issue 13 part 1: 120 calls per minute for the budget is 30 per minute for each of 4 pods."""
    clock = ManualClock(T0)
    throttled = {"limits": [{"name": "day", "period": "Day", "tokens": 100}], "timeZone": "UTC",
                 "ladder": [{"at": 5, "action": "Throttle", "maxRequestsPerMinute": 120}]}
    adm = admission(throttled, clock, pods=pods)
    await run_call(adm, clock, 5, 5, cap=5)  # 10 % used: the ladder throttles from here on
    adm.max_throttle_delay_s = 0  # answer the wait instead of sleeping it: Retry-After is the slot's delay
    c, body = call(cap=1)
    await adm.admit(OPENAI, c, body, "/v1/chat/completions", 1, "http://127.0.0.1")  # takes the first slot
    with pytest.raises(Refused) as refused:
        await adm.admit(OPENAI, *call(cap=1), "/v1/chat/completions", 1, "http://127.0.0.1")
    assert refused.value.retry_after == pytest.approx(interval)
    assert ("4 pods share it" in refused.value.message) is (pods == 4)


async def test_a_per_user_window_speaks_of_the_fleets_use_of_that_user() -> None:
    """Issue 13 part 1, per key: the round lists the users near the ladder with the fleet's figure for each."""
    clock = ManualClock(T0)
    per_user = {"limits": [{"name": "day", "period": "Day", "tokens": 100_000, "per": "User"}], "ladder": LADDER,
                "timeZone": "UTC"}
    shared = lease(1_000) | {"keyUsed": {"alice": {"fleet": "60000", "own": "0"}}}
    adm = admission(per_user, clock, leases=[shared])
    await run_call(adm, clock, 100, 100, cap=100, user="alice")
    await run_call(adm, clock, 100, 100, cap=100, user="bob")
    (b,) = adm.budgets
    alice, bob = (b.window(b.spec.limits[0], u) for u in ("alice", "bob"))  # type: ignore[index]
    assert alice.budget_used(clock.now()) == 60_000 + 200
    assert (alice.percent(clock.now()), bob.percent(clock.now())) == (60, 0)
    assert b.stage([alice]) is Stage.ALERT
    assert b.stage([bob]) is Stage.NORMAL
