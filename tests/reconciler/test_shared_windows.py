"""Per-User and rolling windows shared by several sidecars: the allocator's grants pushed into real sidecar
admission code, rounds of random traffic in between, and the limit checked on what was actually settled.

What a pod sees is exactly what production runs: `effective_policy` with the leases, a new `Admission` that
adopts the old one's windows (a policy push), `snapshot()` read back as the report. Only HTTP is left out.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import pytest
from budget_helpers import run_call

from tokenbudget_api.tokenbudget import TokenBudgetSpec
from tokenbudget_api.windows import ManualClock
from tokenbudget_operator.reconciler.effective import effective_policy
from tokenbudget_operator.reconciler.lease_rules import applied_leases
from tokenbudget_operator.reconciler.lease_types import (
    LeaseConfig,
    LeaseKey,
    PodInput,
    PodReport,
    WindowInput,
    lease_period_start,
    lease_periods,
)
from tokenbudget_operator.reconciler.leases import LeaseAllocator
from tokenbudget_operator.reconciler.views import BudgetView, PodView
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.pricing import PriceBook

T0 = dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
LIMIT = 3000


class Fleet:
    """N sidecars of one budget and an operator allocating leases to them every round."""

    def __init__(self, limit: dict[str, Any], pods: int, *, leased: bool = True,
                 ahead: dt.timedelta = dt.timedelta(seconds=6), **spec_extra: Any) -> None:
        self.total = Decimal(limit["tokens"])
        spec = TokenBudgetSpec.model_validate({"selector": {}, "limits": [limit], **spec_extra})
        self.view = BudgetView(namespace="team-a", name="shared", spec=spec, uid="u", generation=1)
        assert spec.limits is not None
        self.limit = spec.limits[0]
        self.clock = ManualClock(T0)
        self.leased = leased
        self.ahead = ahead  # the operator's: 3 lease rounds
        self.allocator = LeaseAllocator(LeaseConfig(ttl=dt.timedelta(minutes=5)), started=T0 - dt.timedelta(hours=1))
        self.pods: dict[str, Admission] = {}
        self.held: dict[str, list[Any]] = {}  # uid → the leases in the policy it applied
        for i in range(pods):
            self.pods[f"pod-{i}"] = self._admission(f"pod-{i}", [])
        self.settled: list[tuple[str, dt.datetime, int]] = []  # (key, time, tokens) of every call that ran
        if leased:
            self.lease_round()

    def _admission(self, uid: str, leases: list[Any], old: Admission | None = None) -> Admission:
        policy = effective_policy(PodView("team-a", uid, uid), [self.view], [], "/keys",
                                  leases={self.view.key: leases} if self.leased else None)
        adm = Admission(policy, self.clock, PriceBook(policy.prices), default_output_tokens=100,
                        max_throttle_delay_s=30, reservation_ttl_s=3600)
        if old is not None:
            adm.adopt(old)
        self.held[uid] = applied_leases(policy).get((self.view.key, self.limit.name), [])
        return adm

    def lease_round(self) -> None:
        """As `lease_loop.lease_round`: this period and, close to its end, the next one."""
        now = self.clock.now()
        grants: dict[str, list[Any]] = {uid: [] for uid in self.pods}
        for start in lease_periods(self.limit, "UTC", now, self.ahead):
            key = LeaseKey(self.view.key, self.limit.name, None, start)
            inputs = []
            for uid, adm in self.pods.items():
                own = [w for w in adm.budgets[0].report().windows if w.name == self.limit.name]
                inputs.append(PodInput(uid, PodReport.from_sidecar(key, own, self.held[uid])))
            rolling = dt.timedelta(seconds=self.limit.rolling_seconds) if self.limit.rolling_seconds else None
            alloc = self.allocator.allocate(WindowInput(key, self.total, inputs, rolling=rolling), now)
            for grant in alloc.grants:
                grants[grant.pod_uid].append(grant.lease())
        for uid, leases in grants.items():
            self.pods[uid] = self._admission(uid, leases, self.pods[uid])

    async def traffic(self, rng: random.Random, calls: int, keys: list[str], *, grant_wait: bool = False) -> int:
        """`calls` seeded calls; `grant_wait`: as the sidecar does (proxy.admit), a refusal for want of a grant
        waits for the operator's next round (run here at once) and is admitted if the new grant fits."""
        refused = 0
        for _ in range(calls):
            uid = rng.choice(list(self.pods))
            key = rng.choice(keys)
            prompt, out = rng.randint(20, 120), rng.randint(10, 80)
            try:
                await run_call(self.pods[uid], self.clock, prompt, out, cap=80, user=key)
            except Refused as first:
                try:
                    if not (grant_wait and first.awaits_grant):
                        raise
                    self.lease_round()
                    await run_call(self.pods[uid], self.clock, prompt, out, cap=80, user=key)
                except Refused:
                    refused += 1
                    continue
            self.settled.append((key, self.clock.now(), prompt + out))
        return refused

    def in_window(self, key: str, now: dt.datetime, length: dt.timedelta | None) -> int:
        return sum(t for k, at, t in self.settled if k == key and (length is None or at > now - length))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_user_of_a_per_user_window_stays_within_the_limit_across_pods(seed: int) -> None:
    rng = random.Random(seed)
    fleet = Fleet({"name": "per-user", "period": "Day", "tokens": LIMIT, "per": "User"}, pods=4)
    users = ["alice", "bob", "carol"]
    for _ in range(40):
        await fleet.traffic(rng, 12, users[:1] if rng.random() < 0.5 else users)  # alice is the heavy one
        fleet.lease_round()
        fleet.clock.advance(dt.timedelta(seconds=2))
    totals = {u: fleet.in_window(u, fleet.clock.now(), None) for u in users}
    assert all(total <= LIMIT for total in totals.values()), totals
    assert totals["alice"] >= LIMIT * 0.6, f"the leases should let the heavy user near the limit: {totals}"


async def test_without_leases_each_pod_spends_a_per_user_limit_on_its_own() -> None:
    """The failure the leases prevent, shown with the same fleet: four pods, four times the limit."""
    rng = random.Random(7)
    fleet = Fleet({"name": "per-user", "period": "Day", "tokens": LIMIT, "per": "User"}, pods=4, leased=False)
    for _ in range(40):
        await fleet.traffic(rng, 12, ["alice"])
    assert fleet.in_window("alice", fleet.clock.now(), None) > 2 * LIMIT


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_rolling_window_shared_by_pods_never_holds_more_than_the_limit_and_refills(seed: int) -> None:
    rng = random.Random(seed)
    length = dt.timedelta(minutes=10)
    fleet = Fleet({"name": "burst", "duration": "10m", "tokens": LIMIT}, pods=3)
    peak = 0
    admitted_late = 0
    for i in range(90):  # 30 minutes: three window lengths
        before = len(fleet.settled)
        await fleet.traffic(rng, 6, ["anyone"])
        if i >= 60:
            admitted_late += len(fleet.settled) - before
        now = fleet.clock.now()
        peak = max(peak, fleet.in_window("anyone", now, length))
        fleet.lease_round()
        fleet.clock.advance(dt.timedelta(seconds=20))
    assert peak <= LIMIT
    assert peak >= LIMIT * 0.6, f"the window should fill up under this load (peak {peak})"
    assert admitted_late > 0, "as calls age out of the window, leases let new ones in again"


@pytest.mark.parametrize(("ahead", "refusals"), [(dt.timedelta(seconds=6), False), (dt.timedelta(0), True)],
                         ids=["next-period-granted-ahead", "granted-only-once-begun"])
async def test_pods_keep_admitting_across_minute_boundaries_when_the_next_grant_arrives_ahead(
    ahead: dt.timedelta, refusals: bool
) -> None:
    rng = random.Random(5)
    limit = 20_000  # light traffic, ~7,500 tokens a minute: nothing should be refused for want of room
    fleet = Fleet({"name": "minute", "period": "Minute", "tokens": limit}, pods=3, ahead=ahead)
    fleet.clock.set(T0 + dt.timedelta(seconds=41))
    refused = 0
    for _ in range(90):  # three minutes, a lease round every 2 s, light traffic (well under the limit)
        refused += await fleet.traffic(rng, 2, ["anyone"])
        fleet.lease_round()
        fleet.clock.advance(dt.timedelta(seconds=2))
        minute_start = fleet.clock.now().replace(second=0, microsecond=0)
        assert sum(t for _, at, t in fleet.settled if at >= minute_start) <= limit
    assert (refused > 0) is refusals, f"{refused} calls refused"


async def test_the_fullest_key_alone_gives_the_operator_the_same_report_as_every_key() -> None:
    """GET /budgets?keys=fullest (one entry per per-key limit) is all a lease round needs."""
    rng = random.Random(11)
    fleet = Fleet({"name": "per-user", "period": "Day", "tokens": LIMIT, "per": "User"}, pods=1)
    await fleet.traffic(rng, 30, [f"user-{i}" for i in range(12)])
    budget = fleet.pods["pod-0"].budgets[0]
    key = LeaseKey(fleet.view.key, "per-user", None, lease_period_start(fleet.limit, "UTC", fleet.clock.now()))
    every = budget.report().windows
    fullest = budget.report(fullest_only=True).windows
    assert len(every) > 5
    (top,) = fullest
    assert top.keys == len(every)
    assert top.used == max(w.used for w in every)
    held = fleet.held["pod-0"]
    assert PodReport.from_sidecar(key, fullest, held) == PodReport.from_sidecar(key, every, held)
