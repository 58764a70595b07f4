"""Usage pulled from sidecars becomes budget status: counted once however pulls are retried or the operator
crashes, in the same windows as the sidecar counts them, with the ladder stage, top consumers, dry-run counts
and conditions written whole."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any, cast

import pytest
from budget_helpers import admission
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbudget_api.admin import UsagePage
from tokenbudget_api.common import Condition
from tokenbudget_api.tokenbudget import TokenBudgetSpec, TokenBudgetStatus
from tokenbudget_api.usage import Outcome, Usage, UsageRecord
from tokenbudget_api.windows import ManualClock, RollingWindow
from tokenbudget_operator.reconciler.aggregate import Aggregator
from tokenbudget_operator.reconciler.conditions import Problem, budget_conditions
from tokenbudget_operator.reconciler.views import BudgetView
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.usage_log import UsageLog

UTC = dt.UTC
SYDNEY_MIDNIGHT = dt.datetime(2026, 11, 22, 13, tzinfo=UTC)  # 2026-11-23 00:00 AEDT (UTC+11)
MICRO = dt.timedelta(microseconds=1)
BUDGET = "default/b"  # how budget_helpers.admission names its budget


def view(spec: dict[str, Any], *, name: str = "b", ns: str = "default", gen: int = 1) -> BudgetView:
    return BudgetView(namespace=ns, name=name, spec=TokenBudgetSpec.model_validate({"selector": {}, **spec}),
                      uid=f"uid-{name}", generation=gen)


def rec(seq: int, at: dt.datetime, tokens: int = 100, *, cost: str | None = "0.01", user: str | None = None,
        model: str = "gpt-4o", budgets: list[str] | None = None, outcome: Outcome = Outcome.OK,
        decisions: list[str] | None = None) -> UsageRecord:
    return UsageRecord(seq=seq, request_id=f"r{seq}", time=at, upstream="openai", dialect="openai",
                       operation="chat", model=model, user=user, outcome=outcome,
                       usage=Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2),
                       cost_usd=None if cost is None else Decimal(cost),
                       budgets=[BUDGET] if budgets is None else budgets, decisions=decisions or [])


def wire(*records: UsageRecord) -> list[UsageRecord]:
    """As the operator reads them from GET /usage: through JSON and back."""
    page = UsagePage(records=list(records), cursor=0, last_seq=0)
    return UsagePage.model_validate_json(page.model_dump_json()).records


def used(status: dict[str, Any], name: str, key: str | None = None) -> str:
    return str(next(w["used"] for w in status["windows"] if w["name"] == name and w.get("key") == key))


def sidecar_windows(adm: Admission) -> list[dict[str, Any]]:
    """The windows of the sidecar's GET /budgets snapshot for its one budget."""
    return cast(list[dict[str, Any]], adm.budgets[0].report().dump()["windows"])


DAY = {"timeZone": "Australia/Sydney", "limits": [{"name": "daily", "period": "Day", "tokens": 1000}]}


# ----- counted once ------------------------------------------------------------------------------------------


def test_a_retried_pull_never_counts_a_record_twice() -> None:
    agg = Aggregator()
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    batch = wire(rec(1, t), rec(2, t), rec(3, t))
    assert agg.add("pod-a", batch) == 3
    assert agg.add("pod-a", batch) == 0  # the same pull again
    assert agg.add("pod-a", batch[1:] + wire(rec(4, t))) == 1  # overlapping
    assert agg.add("pod-b", batch) == 3  # another pod's seq 1..3 are other records
    assert (agg.cursor("pod-a"), agg.cursor("pod-b"), agg.cursor("pod-c")) == (4, 3, 0)
    assert used(agg.status(view(DAY), t), "daily") == "700"


def test_a_sidecar_that_lost_its_log_starts_a_new_sequence() -> None:
    agg = Aggregator()
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg.add("pod-a", wire(rec(1, t), rec(2, t), rec(3, t)), last_seq=3)
    assert agg.add("pod-a", wire(rec(1, t)), last_seq=1) == 1  # restarted without a ledger: seq 1 is new
    assert used(agg.status(view(DAY), t), "daily") == "400"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("calls"), st.integers(1, 4)),
    st.tuples(st.just("pull"), st.integers(1, 5)),
    st.tuples(st.just("persist")),
    st.tuples(st.just("ack")),
    st.tuples(st.just("crash")),
), max_size=30))
def test_an_operator_crash_anywhere_between_pull_persist_and_ack_neither_loses_nor_double_counts(
    steps: list[tuple[Any, ...]],
) -> None:
    """The order the kopf layer follows: pull -> add -> persist state() -> ack -> status; crash at any point."""
    log = UsageLog()
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=2)
    agg, persisted, spent, acked_upto = Aggregator(), None, 0, 0
    for step in steps:
        if step[0] == "calls":
            for _ in range(step[1]):
                tokens = 10 * (log.last_seq + 1)
                log.append(rec(0, t, tokens))
                spent += tokens
        elif step[0] == "pull":
            agg.add("pod-a", wire(*log.after(agg.cursor("pod-a"), limit=step[1])), last_seq=log.last_seq)
        elif step[0] == "persist":
            persisted = json.loads(json.dumps(agg.state()))  # as a ConfigMap would hold it
            acked_upto = agg.cursor("pod-a")
        elif step[0] == "ack":
            log.ack(acked_upto)  # only what a persisted state covers
        elif step[0] == "crash":
            agg = Aggregator()
            if persisted is not None:
                agg.restore(persisted)
    while records := log.after(agg.cursor("pod-a")):  # catch up
        agg.add("pod-a", wire(*records), last_seq=log.last_seq)
    big = view({"limits": [{"name": "daily", "period": "Day", "tokens": 10**12}]})
    assert used(agg.status(big, t), "daily") == str(spent)


# ----- the same windows as the sidecar -----------------------------------------------------------------------


def test_records_either_side_of_a_sydney_midnight_land_in_different_days() -> None:
    agg = Aggregator()
    before, after = SYDNEY_MIDNIGHT - MICRO, SYDNEY_MIDNIGHT
    agg.add("pod-a", wire(rec(1, before, 300), rec(2, after, 50)))
    yesterday = agg.status(view(DAY), before)
    today = agg.status(view(DAY), after + dt.timedelta(hours=20))
    assert used(yesterday, "daily") == "300"
    assert used(today, "daily") == "50"
    assert yesterday["windows"][0]["resetsAt"] == "2026-11-22T13:00:00Z"
    assert today["windows"][0]["resetsAt"] == "2026-11-23T13:00:00Z"
    # The sidecar, replaying the same records from its ledger, counts exactly the same.
    clock = ManualClock(after + dt.timedelta(hours=20))
    adm = admission(DAY, clock)
    adm.replay([rec(1, before, 300), rec(2, after, 50)])
    (snap,) = sidecar_windows(adm)
    assert snap["used"] == "50"


LIMITS = {
    "timeZone": "Australia/Sydney",
    "limits": [
        {"name": "daily", "period": "Day", "tokens": 5000},
        {"name": "hourly", "period": "Hour", "costUSD": "1.00"},
        {"name": "weekly", "period": "Week", "requests": 500},
        {"name": "rolling", "duration": "15m", "tokens": 3000},
        {"name": "per-user", "period": "Day", "tokens": 800, "per": "User"},
    ],
}
DST_START = dt.datetime(2026, 10, 3, 15, 59, tzinfo=UTC)  # 2026-10-04 01:59 AEST, a minute before 02:00 -> 03:00


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 48 * 3600), st.integers(0, 400), st.sampled_from([None, "ann", "bob"])),
                min_size=1, max_size=25),
       st.integers(0, 48 * 3600))
def test_every_window_counts_exactly_as_the_sidecar_replaying_its_ledger(
    calls: list[tuple[int, int, str | None]], later: int
) -> None:
    """Random calls across Sydney's DST start: Day (23 hours that day), Hour, Week, rolling, per-User."""
    start = DST_START - dt.timedelta(hours=24)
    records = [rec(i + 1, start + dt.timedelta(seconds=s), tokens, user=user, cost=f"0.00{tokens % 10}")
               for i, (s, tokens, user) in enumerate(sorted(calls, key=lambda c: c[0]))]
    now = records[-1].time + dt.timedelta(seconds=later)
    agg = Aggregator(keys_per_window=10)
    agg.add("pod-a", wire(*records))
    status = agg.status(view(LIMITS), now)
    adm = admission(LIMITS, ManualClock(now))
    adm.replay(records)
    sidecar = {(w["name"], w["key"]): w for w in sidecar_windows(adm)}
    ours = {(w["name"], w.get("key")): w for w in status["windows"]}
    for (name, key), theirs in sidecar.items():
        if Decimal(theirs["used"]) == 0 and (name, key) not in ours:
            continue  # a per-user key with nothing left in the window
        assert Decimal(ours[(name, key)]["used"]) == Decimal(theirs["used"]), (name, key)
        assert ours[(name, key)]["percent"] == theirs["percent"]
        resets = theirs["resetsAt"]
        if resets is not None and name != "rolling":
            assert ours[(name, key)]["resetsAt"] == dt.datetime.fromisoformat(resets).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_rolling_window_forgets_usage_exactly_when_the_shared_counter_does() -> None:
    spec = {"limits": [{"name": "r", "duration": "10m", "tokens": 10_000}]}
    t0 = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
    records = [rec(i + 1, t0 + dt.timedelta(seconds=37 * i), 10 + i) for i in range(30)]
    agg = Aggregator()
    agg.add("pod-a", wire(*records))
    counter = RollingWindow(600, ManualClock(t0))
    for r in records:
        counter.add(r.usage.total_tokens, r.time)
    for offset in range(0, 40 * 60, 13):
        now = t0 + dt.timedelta(seconds=offset)
        assert Decimal(used(agg.status(view(spec), now), "r")) == counter.used(now), offset


def test_refused_calls_and_other_budgets_do_not_count() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 100), rec(2, t, 200, outcome=Outcome.REFUSED, budgets=[]),
                          rec(3, t, 400, budgets=["default/other"]), rec(4, t, 800, budgets=[BUDGET, "default/other"])))
    assert used(agg.status(view(DAY), t), "daily") == "900"
    assert used(agg.status(view(DAY, name="other"), t), "daily") == "1200"


def test_units_are_tokens_dollars_and_calls() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    spec = {"limits": [{"name": "tok", "period": "Day", "tokens": 1000},
                       {"name": "usd", "period": "Day", "costUSD": "2.00"},
                       {"name": "calls", "period": "Day", "requests": 10}]}
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 100, cost="0.25"), rec(2, t, 150, cost="0.5"), rec(3, t, 50, cost=None)))
    status = agg.status(view(spec), t)
    assert [(w["name"], w["unit"], w["used"], w["limit"], w["percent"]) for w in status["windows"]] == [
        ("tok", "Tokens", "300", "1000", 30), ("usd", "USD", "0.75", "2", 37), ("calls", "Requests", "3", "10", 30)]
    assert status["usedPercent"] == 37
    assert status["tightestWindow"] == "usd"


def test_per_user_windows_show_the_fullest_keys_and_anonymous_callers() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    spec = {"limits": [{"name": "u", "period": "Day", "tokens": 1000, "per": "User"}]}
    agg = Aggregator(keys_per_window=2)
    agg.add("pod-a", wire(rec(1, t, 100, user="ann"), rec(2, t, 900, user="bob"), rec(3, t, 300),
                          rec(4, t, 50, user="cy")))
    status = agg.status(view(spec), t)
    assert [(w["key"], w["used"], w["percent"]) for w in status["windows"]] == [("bob", "900", 90),
                                                                                 ("anonymous", "300", 30)]
    assert agg.settled(view(spec), "u", "bob", t) == {"pod-a": Decimal(900)}
    agg.add("pod-b", wire(rec(1, t, 40, user="ann"), rec(2, t, 30, user="ann")))
    # No key on a per-key window: what the lease every key shares must cover, each pod's fullest key.
    assert agg.settled(view(spec), "u", None, t) == {"pod-a": Decimal(900), "pod-b": Decimal(70)}


def test_settled_per_pod_feeds_the_lease_allocator() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 100), rec(2, t, 50)))
    agg.add("pod-b", wire(rec(1, t, 70), rec(2, SYDNEY_MIDNIGHT - MICRO, 999)))
    assert agg.settled(view(DAY), "daily", None, t) == {"pod-a": Decimal(150), "pod-b": Decimal(70)}
    assert agg.settled(view(DAY), "missing", None, t) == {}


def test_a_new_time_zone_starts_the_window_afresh_like_the_sidecar() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 100)))
    assert used(agg.status(view(DAY), t), "daily") == "100"
    moved = {**DAY, "timeZone": "Europe/Berlin"}
    assert used(agg.status(view(moved), t), "daily") == "0"
    agg.add("pod-a", wire(rec(2, t, 40)))
    assert used(agg.status(view(moved), t), "daily") == "40"


# ----- ladder, consumers, dry run, status shape --------------------------------------------------------------

LADDER = {**DAY, "hysteresisPercent": 2, "ladder": [
    {"at": 50, "action": "Alert"}, {"at": 80, "action": "Throttle", "maxRequestsPerMinute": 60},
    {"at": 95, "action": "Block"}]}


@pytest.mark.parametrize(
    ("path", "stages"),
    [
        ([100, 400], ["Normal", "Alert"]),
        ([500, 300, 0], ["Alert", "Throttle", "Throttle"]),
        ([800, 150], ["Throttle", "Block"]),
    ],
    ids=["climbs-to-alert", "throttle-holds", "block"],
)
def test_the_stage_follows_the_ladder(path: list[int], stages: list[str]) -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    seen = []
    for seq, tokens in enumerate(path, start=1):
        agg.add("pod-a", wire(rec(seq, t, tokens)))
        seen.append(agg.status(view(LADDER), t)["stage"])
    assert seen == stages


def test_the_stage_is_left_only_below_the_hysteresis_margin() -> None:
    """At 80% Throttle; the next day starts at 0 and the stage falls all the way, however it got there."""
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 800)))
    assert agg.status(view(LADDER), t)["stage"] == "Throttle"
    lower = {**LADDER, "limits": [{"name": "daily", "period": "Day", "tokens": 1010}]}  # 79%: inside the margin
    assert agg.status(view(lower), t)["stage"] == "Throttle"
    lowest = {**LADDER, "limits": [{"name": "daily", "period": "Day", "tokens": 1040}]}  # 76%: below it
    assert agg.status(view(lowest), t)["stage"] == "Alert"
    assert agg.status(view(lowest), t + dt.timedelta(days=1))["stage"] == "Normal"


def test_top_consumers_are_the_largest_pods_and_users_of_the_longest_window() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    spec = {"timeZone": "Australia/Sydney", "limits": [{"name": "h", "period": "Hour", "tokens": 10**6},
                                                       {"name": "m", "period": "Month", "tokens": 10**7}]}
    agg = Aggregator(top=2)
    agg.add("uid-a", wire(rec(1, t, 100, cost="1.5", user="ann"), rec(2, t - dt.timedelta(days=2), 10, cost="9")),
            pod_name="chat-a")
    agg.add("uid-b", wire(rec(1, t, 500, cost="0.5", user="bob")), pod_name="chat-b")
    agg.add("uid-c", wire(rec(1, t, 5, cost="0.1", user="cy")))
    top = agg.status(view(spec), t)["topConsumers"]
    assert top == [
        {"kind": "Pod", "name": "chat-a", "tokens": 110, "costUSD": "10.5"},
        {"kind": "Pod", "name": "chat-b", "tokens": 500, "costUSD": "0.5"},
        {"kind": "User", "name": "ann", "tokens": 100, "costUSD": "1.5"},
        {"kind": "User", "name": "bob", "tokens": 500, "costUSD": "0.5"},
    ]


def test_dry_run_would_have_counts_calls_tokens_and_dollars_of_this_budget_only() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(
        rec(1, t, 100, cost="0.1", decisions=[f"{BUDGET}:DryRun:Block", f"{BUDGET}:DryRun:Block"]),
        rec(2, t, 200, cost="0.2", decisions=[f"{BUDGET}:DryRun:Block", f"{BUDGET}:DryRun:Downgrade"]),
        rec(3, t, 400, cost="0.4", decisions=["default/other:DryRun:Block", f"{BUDGET}:Clamp"]),
        rec(4, t, 800, outcome=Outcome.REFUSED, budgets=[], decisions=["tokenbudget: budget default/b ... left"]),
    ))
    status = agg.status(view({**DAY, "enforcement": "DryRun"}), t)
    assert status["dryRun"] == [
        {"action": "Block", "count": 2, "tokens": 300, "costUSD": "0.3"},
        {"action": "Downgrade", "count": 1, "tokens": 200, "costUSD": "0.2"},
    ]
    # Its windows count only what enforcement would have let through: not the two calls it would have
    # blocked, but the one another budget would have (UsageRecord.counted_budgets).
    assert used(status, "daily") == "400"


def test_the_status_is_a_valid_token_budget_status_with_conditions() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 1000)), pod_name="chat-0")
    usage = agg.status(view(LADDER, gen=4), t)
    conditions = budget_conditions(None, generation=4, now=t, usage=usage, selected=2, synced=2)
    status = TokenBudgetStatus.model_validate({**usage, "conditions": conditions, "pods": {"selected": 2,
                                                                                           "synced": 2}})
    assert status.observed_generation == 4
    assert status.stage is not None
    assert status.stage.value == "Block"
    assert status.used_percent == 100
    assert status.tightest_window == "daily"
    assert {c.type: c.status.value for c in status.conditions or []} == {
        "Ready": "True", "Synced": "True", "LadderStage": "True", "Exhausted": "True", "SidecarMissing": "False"}


def test_an_empty_budget_reports_zero_and_no_dry_run() -> None:
    status = Aggregator().status(view(DAY), SYDNEY_MIDNIGHT)
    assert status["windows"] == [{"name": "daily", "unit": "Tokens", "used": "0", "limit": "1000", "percent": 0,
                                  "remaining": "1000", "resetsAt": "2026-11-23T13:00:00Z"}]
    assert status["stage"] == "Normal"
    assert "dryRun" not in status
    assert status["topConsumers"] == []


def test_state_survives_json_and_restores_the_same_status() -> None:
    t = SYDNEY_MIDNIGHT + dt.timedelta(hours=1)
    spec = {**LIMITS, "ladder": LADDER["ladder"]}
    agg = Aggregator()
    agg.add("pod-a", wire(rec(1, t, 600, user="ann"), rec(2, t, 300, decisions=[f"{BUDGET}:DryRun:Block"])),
            pod_name="chat-a")
    agg.add("pod-b", wire(rec(1, t, 50, budgets=["default/not-yet-seen"])))
    before = agg.status(view(spec), t)
    copy = Aggregator()
    copy.restore(json.loads(json.dumps(agg.state())))
    assert copy.status(view(spec), t) == before
    assert copy.cursor("pod-a") == 2
    assert copy.cursor("pod-b") == 1
    assert used(copy.status(view(DAY, name="not-yet-seen"), t), "daily") == "50"  # waiting records kept
    with pytest.raises(ValueError, match="version"):
        Aggregator().restore({"version": 99})


# ----- conditions --------------------------------------------------------------------------------------------

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
USAGE = {"stage": "Alert", "usedPercent": 60, "tightestWindow": "daily",
         "windows": [{"name": "daily", "percent": 60}]}


def conds(previous: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, dict[str, Any]]:
    args: dict[str, Any] = {"generation": 3, "now": NOW, "usage": USAGE, "selected": 2, "synced": 2, **kw}
    out = budget_conditions(previous, **args)
    for c in out:
        Condition.model_validate(c)
    return {c["type"]: c for c in out}


@pytest.mark.parametrize(
    ("kw", "ready", "synced"),
    [
        ({}, ("True", "Enforcing"), ("True", "AllPodsSynced")),
        ({"dry_run": True}, ("True", "DryRun"), ("True", "AllPodsSynced")),
        ({"synced": 1}, ("False", "SyncInProgress"), ("False", "SyncInProgress")),
        ({"selected": 0, "synced": 0}, ("False", "NoPodsSelected"), ("False", "NoPodsSelected")),
        ({"problems": [Problem("PriceConflict", "budgets a, b give different prices")]},
         ("False", "PriceConflict"), ("True", "AllPodsSynced")),
    ],
    ids=["enforcing", "dry-run", "syncing", "no-pods", "misconfigured"],
)
def test_ready_and_synced_say_why(kw: dict[str, Any], ready: tuple[str, str], synced: tuple[str, str]) -> None:
    got = conds(**kw)
    assert (got["Ready"]["status"], got["Ready"]["reason"]) == ready
    assert (got["Synced"]["status"], got["Synced"]["reason"]) == synced
    assert list(got) == ["Ready", "Synced", "LadderStage", "Exhausted", "SidecarMissing"]
    assert all(c["observedGeneration"] == 3 for c in got.values())


def test_sidecar_missing_names_how_many_pods_bypass_it_and_the_first_few() -> None:
    assert (conds()["SidecarMissing"]["status"], conds()["SidecarMissing"]["reason"]) == ("False",
                                                                                          "AllPodsHaveSidecar")
    missing = conds(without_sidecar=[f"chat-{i}" for i in range(7)])["SidecarMissing"]
    assert (missing["status"], missing["reason"]) == ("True", "PodsWithoutSidecar")
    assert missing["message"].startswith("7 selected pod(s) run without the sidecar, unmetered: "
                                         "chat-0, chat-1, chat-2, chat-3, chat-4 and 2 more")


def test_counts_and_problems_are_in_the_messages() -> None:
    assert conds(synced=1)["Synced"]["message"] == "1/2 selected pods enforce generation 3"
    ready = conds(problems=[Problem("UpstreamConflict", "x"), Problem("PriceConflict", "y")])["Ready"]
    assert ready["reason"] == "UpstreamConflict"
    assert ready["message"] == "x; y"
    ladder = conds()["LadderStage"]
    assert (ladder["status"], ladder["reason"], ladder["message"]) == ("True", "Alert", "window daily at 60%")


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    first = conds()
    later = NOW + dt.timedelta(minutes=5)
    same = conds(list(first.values()), now=later, synced=2, usage={**USAGE, "usedPercent": 70})
    assert same["Ready"]["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert same["LadderStage"]["message"] == "window daily at 70%"  # message refreshed, time kept
    flipped = conds(list(same.values()), now=later, synced=1)
    assert flipped["Ready"]["lastTransitionTime"] == "2026-11-23T12:05:00Z"
    assert flipped["LadderStage"]["lastTransitionTime"] == "2026-11-23T12:00:00Z"


def test_exhausted_names_the_window_and_when_it_resets() -> None:
    usage = {"stage": "Block", "usedPercent": 100, "tightestWindow": "u",
             "windows": [{"name": "d", "percent": 40}, {"name": "u", "key": "bob", "percent": 100,
                                                        "resetsAt": "2026-11-23T13:00:00Z"}]}
    got = conds(usage=usage)["Exhausted"]
    assert (got["status"], got["reason"]) == ("True", "WindowExhausted")
    assert got["message"] == "window u[bob] is used up until 2026-11-23T13:00:00Z"
    quiet = conds(usage={"stage": "Normal", "usedPercent": 0, "windows": []})
    assert quiet["Exhausted"]["reason"] == "NoUsageYet"
    assert quiet["LadderStage"]["reason"] == "Normal"
