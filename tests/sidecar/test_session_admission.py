"""A WebSocket session is checked once, at connect (session_admission.py): refused when a call would be blocked
now, with the budget's words and Retry-After; noted only in DryRun; nothing held afterwards."""

from __future__ import annotations

import pytest
from budget_helpers import admission, at, run_call

from tokenbudget_api.windows import ManualClock
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.session_admission import admit_session

NOW = "2026-11-23T10:00:00+00:00"


async def test_a_window_with_room_admits_and_holds_nothing() -> None:
    clock = ManualClock(at(NOW))
    adm = admission({"limits": [{"name": "day", "period": "Day", "tokens": 1000}]}, clock)
    assert admit_session(adm, "gpt-realtime", None) == []
    (b,) = adm.budgets
    assert not b.reservations
    assert all(w.reserved == 0 for w in b.windows.values())


async def test_a_spent_window_refuses_with_the_time_it_frees_up() -> None:
    clock = ManualClock(at(NOW))
    adm = admission({"limits": [{"name": "day", "period": "Day", "tokens": 1000}]}, clock)
    await run_call(adm, clock, 500, 500, cap=500)
    with pytest.raises(Refused) as refused:
        admit_session(adm, "gpt-realtime", None)
    assert refused.value.status == 429
    assert refused.value.retry_after == pytest.approx(14 * 3600, abs=1)  # midnight UTC
    assert "limit day has 0 tokens left of 1000" in refused.value.message


async def test_the_block_stage_and_the_allow_list_refuse_but_dry_run_only_notes() -> None:
    clock = ManualClock(at(NOW))
    spec = {"ladder": [{"at": 50, "action": "Block"}], "limits": [{"name": "day", "period": "Day", "tokens": 1000}],
            "models": {"allow": ["gpt-realtime*"]}}
    adm = admission(spec, clock)
    with pytest.raises(Refused, match="not allowed"):
        admit_session(adm, "gpt-4o-realtime-preview", None)
    await run_call(adm, clock, 300, 300, cap=300, model="gpt-realtime")
    with pytest.raises(Refused, match="Block stage"):
        admit_session(adm, "gpt-realtime", None)
    dry = admission({**spec, "enforcement": "DryRun"}, clock)
    await run_call(dry, clock, 300, 300, cap=300, model="gpt-realtime")
    assert admit_session(dry, "gpt-4o-realtime-preview", None) == ["default/b:DryRun:Block"], "once per budget"


async def test_a_model_named_only_after_the_upgrade_skips_the_allow_list_and_per_model_windows() -> None:
    clock = ManualClock(at(NOW))
    spec = {"limits": [{"name": "per-model", "period": "Day", "tokens": 10, "per": "Model"}],
            "models": {"allow": ["gemini-*"]}}
    adm = admission(spec, clock)
    assert admit_session(adm, "", None) == []
    (b,) = adm.budgets
    assert not b.windows, "no window for an empty model name"


async def test_a_spent_grant_refuses_under_closed_and_admits_under_open() -> None:
    clock = ManualClock(at(NOW))
    lease = {"window": "day", "granted": "0", "periodStart": "2026-11-23T00:00:00+00:00",
             "expiresAt": "2026-11-23T09:00:00+00:00"}
    limits = [{"name": "day", "period": "Day", "tokens": 100000}]
    closed = admission({"limits": limits, "failMode": "Closed"}, clock, leases=[lease])
    with pytest.raises(Refused) as refused:
        admit_session(closed, "gpt-realtime", None)
    assert refused.value.retry_after == 2.0  # a lease round
    opened = admission({"limits": limits, "failMode": "Open"}, clock, leases=[lease])
    admit_session(opened, "gpt-realtime", None)


async def test_a_spent_current_grant_refuses_for_a_lease_round_and_says_the_budget_has_room() -> None:
    clock = ManualClock(at(NOW))
    lease = {"window": "day", "granted": "8", "periodStart": "2026-11-23T00:00:00+00:00",
             "expiresAt": "2026-11-23T11:00:00+00:00"}
    adm = admission({"limits": [{"name": "day", "period": "Day", "tokens": 100000}]}, clock, leases=[lease])
    await run_call(adm, clock, 4, 4, cap=4)
    with pytest.raises(Refused) as refused:
        admit_session(adm, "gpt-realtime", None)
    assert refused.value.retry_after == 2.0
    assert "this pod's grant has 0 tokens left of 8" in refused.value.message
