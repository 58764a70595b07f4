"""The reconciler's pure decisions, without a control plane: which pods count, which windows are leased,
what a pod gets before its first lease round, when a renewed lease is worth a push, and the status counts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, cast

import pytest

from tokenbudget_api import names
from tokenbudget_api.policy import Lease
from tokenbudget_api.tokenbudget import TokenBudgetSpec
from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.reconciler.effective import resolve
from tokenbudget_operator.reconciler.fleet import Fleet, PodAgent
from tokenbudget_operator.reconciler.indexes import BarePod, BudgetEntry, PodEntry, has_sidecar
from tokenbudget_operator.reconciler.lease_rules import applied_leases, leased_windows, leases_for, stable
from tokenbudget_operator.reconciler.status_loop import budget_status
from tokenbudget_operator.reconciler.views import BudgetView, PodView

NS = "team-a"
KEY_DIR = "/var/run/secrets/tokenbudget/upstreams"


def budget(name: str, **spec: Any) -> BudgetView:
    body = {"selector": {"matchLabels": {"app": "chat"}}, "timeZone": "UTC",
            "limits": [{"name": "day", "period": "Day", "tokens": 1000}], **spec}
    return BudgetView(namespace=NS, name=name, spec=TokenBudgetSpec.model_validate(body), uid=f"uid-{name}",
                      generation=1)


def pod(name: str, labels: dict[str, str] | None = None) -> PodEntry:
    view = PodView(namespace=NS, name=name, uid=f"uid-{name}", labels=labels or {"app": "chat"})
    return PodEntry(view, "127.0.0.2")


def fleet_of(*budgets: BudgetView) -> Fleet:
    index: Any = {NS: [BudgetEntry(b) for b in budgets]} if budgets else {}
    return Fleet(OperatorSettings(namespace="tokenbudget-system"), None, index, {}, {})


@pytest.mark.parametrize(("spec", "expected"), [
    ({"initContainers": [{"name": names.SIDECAR_CONTAINER}], "containers": [{"name": "app"}]}, True),
    ({"containers": [{"name": "app"}, {"name": names.SIDECAR_CONTAINER}]}, True),
    ({"containers": [{"name": "app"}]}, False),
    ({}, False),
])
def test_a_pod_counts_when_it_runs_the_sidecar_as_a_native_or_a_classic_container(
    spec: dict[str, Any], expected: bool
) -> None:
    assert has_sidecar(spec) is expected


def test_every_window_of_a_budget_is_leased_enforcing_or_dry_run() -> None:
    view = budget("b", limits=[
        {"name": "day", "period": "Day", "tokens": 1000},
        {"name": "per-user", "period": "Day", "tokens": 100, "per": "User"},
        {"name": "burst", "duration": "5m", "requests": 60},
        {"name": "month-usd", "period": "Month", "costUSD": "40.00"},
    ])
    assert [lim.name for lim in leased_windows(view)] == ["day", "per-user", "burst", "month-usd"]
    assert [lim.name for lim in leased_windows(budget("dry", enforcement="DryRun"))] == ["day"]


def test_a_new_pod_gets_a_zero_level_on_a_rolling_window_stable_for_the_day() -> None:
    view = budget("b", limits=[{"name": "burst", "duration": "5m", "tokens": 600}])
    (lease,) = leases_for({}, [view], dt.datetime.now(dt.UTC))[view.key]
    assert (lease.granted, lease.period_start) == (0, None)
    assert lease.expires_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=30), "expiry would admit under Open"
    assert leases_for({}, [view], dt.datetime.now(dt.UTC))[view.key] == [lease]


def test_a_pod_new_to_a_leased_window_gets_a_zero_grant_never_the_whole_limit() -> None:
    view = budget("b")
    leases = leases_for({}, [view], dt.datetime.now(dt.UTC))
    (lease,) = leases[view.key]
    assert lease.granted == 0
    assert lease.period_start == dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # Stable until the period ends: re-resolving gives the same version, so nothing is pushed twice.
    again = leases_for({}, [view], dt.datetime.now(dt.UTC))
    entry = pod("new")
    assert resolve(entry.view, [view], [], KEY_DIR, leases=leases).policy.version == resolve(
        entry.view, [view], [], KEY_DIR, leases=again).policy.version


def test_a_renewal_that_only_moves_the_expiry_is_not_pushed_until_half_the_ttl_is_gone() -> None:
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    start = now.replace(hour=0)
    ttl = dt.timedelta(seconds=OperatorSettings(namespace="tokenbudget-system").lease_ttl_s)
    pushed = Lease(window="day", granted=Decimal(250), period_start=start, expires_at=now + dt.timedelta(seconds=60))
    renewed = pushed.model_copy(update={"expires_at": now + dt.timedelta(seconds=70)})
    assert stable([pushed], renewed, now + dt.timedelta(seconds=10), ttl, Decimal(1000)) is pushed
    assert stable([pushed], renewed, now + dt.timedelta(seconds=40), ttl, Decimal(1000)) is renewed  # < ttl/2 left
    more = renewed.model_copy(update={"granted": Decimal(300)})
    assert stable([pushed], more, now + dt.timedelta(seconds=10), ttl, Decimal(1000)) is more  # a new amount goes out


def test_applied_leases_are_read_back_from_a_pushed_policy() -> None:
    view = budget("b")
    lease = Lease(window="day", granted=Decimal(7), period_start=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
                  expires_at=dt.datetime(2026, 11, 23, 1, tzinfo=dt.UTC))
    tomorrow = lease.model_copy(update={"period_start": dt.datetime(2026, 11, 24, tzinfo=dt.UTC)})
    policy = resolve(pod("a").view, [view], [], KEY_DIR, leases={view.key: [lease, tomorrow]}).policy
    assert applied_leases(policy) == {(view.key, "day"): [lease, tomorrow]}


def test_status_counts_selected_and_synced_pods_and_says_why_when_none_is_selected() -> None:
    view = budget("b")
    rec = fleet_of(view)
    now = dt.datetime.now(dt.UTC)
    for name, synced in (("a", True), ("b", False)):
        entry = pod(name)
        desired = resolve(entry.view, [view], [], KEY_DIR)
        rec.agents[entry.view.uid] = PodAgent(entry, desired, desired.policy.version if synced else None)
    other = pod("c", {"app": "other"})
    rec.agents[other.view.uid] = PodAgent(other, resolve(other.view, [view], [], KEY_DIR))
    rec.bare_pods_index = cast(Any, {NS: [BarePod("chat-old", {"app": "chat"}), BarePod("db", {"app": "db"})],
                                     "elsewhere": [BarePod("chat-x", {"app": "chat"})]})
    status = budget_status(rec, BudgetEntry(view), now)
    assert status["pods"] == {"selected": 2, "synced": 1, "withoutSidecar": 1, "withoutSidecarPods": ["chat-old"]}
    missing = next(c for c in status["conditions"] if c["type"] == "SidecarMissing")
    assert (missing["status"], missing["reason"]) == ("True", "PodsWithoutSidecar")
    assert "chat-old" in missing["message"]
    synced_c = next(c for c in status["conditions"] if c["type"] == "Synced")
    assert (synced_c["status"], synced_c["reason"]) == ("False", "SyncInProgress")
    assert status["observedGeneration"] == 1

    lonely = fleet_of(budget("nobody", selector={"matchLabels": {"app": "none"}}))
    ready = next(c for c in budget_status(lonely, BudgetEntry(budget("nobody")), now)["conditions"]
                 if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoPodsSelected")


def test_a_lease_goes_out_again_when_the_other_pods_moved_by_a_percentage_point() -> None:
    """The sidecar's fleet percent is at most one round and one point behind; no push for less."""
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    ttl = dt.timedelta(seconds=60)
    pushed = Lease(window="day", granted=Decimal(250), period_start=now.replace(hour=0),
                   expires_at=now + dt.timedelta(seconds=60), fleet_used=Decimal(400), own_used=Decimal(100))
    same_point = pushed.model_copy(update={"fleet_used": Decimal(409)})  # others: 30.0 % → 30.9 %
    assert stable([pushed], same_point, now, ttl, Decimal(1000)) is pushed
    next_point = pushed.model_copy(update={"fleet_used": Decimal(410)})  # 31 %
    assert stable([pushed], next_point, now, ttl, Decimal(1000)) is next_point


def test_key_problems_name_the_upstream_the_secret_and_the_missing_key() -> None:
    from tokenbudget_operator.reconciler.key_secrets import key_problems

    upstreams = [{"name": "openai", "baseURL": "https://api.openai.com", "dialect": "OpenAI",
                  "apiKeySecretRef": {"name": "oa", "key": "api-key"}},
                 {"name": "claude", "baseURL": "https://api.anthropic.com", "dialect": "Anthropic",
                  "apiKeySecretRef": {"name": "an", "key": "key"}},
                 {"name": "plain", "baseURL": "https://api.openai.com", "dialect": "OpenAI"}]
    view = budget("keyed", upstreams=upstreams)
    found = key_problems(view, {"oa": None, "an": frozenset({"other"})})
    assert [p.message.split(":")[0] for p in found] == ["upstream 'openai'", "upstream 'claude'"]
    assert "Secret 'oa' does not exist in namespace team-a" in found[0].message
    assert "Secret 'an' has no key 'key'" in found[1].message
    assert {p.reason for p in found} == {"KeySecretMissing"}
    assert {p.source for p in found} == {f"{NS}/keyed"}
    assert key_problems(view, {"oa": frozenset({"api-key"}), "an": frozenset({"key"})}) == []
    assert key_problems(view, {}) == [], "a Secret not looked at yet is no problem"
