"""Leases split a shared window between sidecars without ever promising more than remains, across pod churn,
failed pushes, missing reports and operator restarts."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from budget_helpers import run_call
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tokenbudget_api.admin import WindowReport
from tokenbudget_api.tokenbudget import Limit, TokenBudgetSpec
from tokenbudget_api.windows import ManualClock
from tokenbudget_operator.reconciler.effective import effective_policy
from tokenbudget_operator.reconciler.lease_types import (
    USD_QUANTUM,
    Allocation,
    LeaseConfig,
    LeaseKey,
    PodInput,
    PodReport,
    WindowInput,
    lease_period_start,
    quantum_for,
)
from tokenbudget_operator.reconciler.leases import LeaseAllocator, allocate, assess
from tokenbudget_operator.reconciler.views import BudgetView, PodView
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.pricing import PriceBook

T0 = dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
KEY = LeaseKey("team-a/shared", "daily", None, dt.datetime(2026, 11, 23, tzinfo=dt.UTC))
D = Decimal


def report(held: int, used: int = 0, *, low: bool | None = None, reserved: int = 0) -> PodReport:
    """What a sidecar would report; `low` as the sidecar computes it unless given."""
    is_low = (held - used - reserved) < held * D("0.2") if low is None else low
    return PodReport(held=D(held), used=D(used), reserved=D(reserved), low=is_low)


def window(pods: list[PodInput], limit: int = 1000, settled: dict[str, int] | None = None) -> WindowInput:
    return WindowInput(KEY, D(limit), pods, {k: D(v) for k, v in (settled or {}).items()})


def granted(a: Allocation) -> dict[str, Decimal]:
    return {g.pod_uid: g.granted for g in a.grants}


# ----- the world: sidecars that admit only within unexpired leases (failMode Closed) -------------------------


@dataclass
class Sidecar:
    held: Decimal = Decimal(0)
    expires: dt.datetime | None = None
    used: Decimal = Decimal(0)

    def room(self, now: dt.datetime) -> Decimal:
        """A sidecar keeps spending a grant after it expires (an operator outage must not stop calls)."""
        if self.expires is None:
            return D(0)
        return max(D(0), self.held - self.used)

    def exposure(self, now: dt.datetime) -> Decimal:
        """The most this sidecar can end up having spent."""
        return self.used + self.room(now)

    def report(self) -> PodReport:
        return PodReport(held=self.held, used=self.used, low=(self.held - self.used) < self.held * D("0.2"))


CONFIG = LeaseConfig(ttl=dt.timedelta(seconds=60), learning=dt.timedelta(days=1))


@dataclass
class World:
    limit: Decimal
    config: LeaseConfig = CONFIG
    now: dt.datetime = T0
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    settled: dict[str, Decimal] = field(default_factory=dict)
    gone: Decimal = Decimal(0)
    serial: int = 0
    reported: dict[str, Decimal] = field(default_factory=dict)  # most held reported since the restart
    allocator_knew: dict[str, Decimal] = field(default_factory=dict)  # pods granted since the restart
    allocator: LeaseAllocator = field(init=False)

    def __post_init__(self) -> None:
        self.allocator = LeaseAllocator(self.config, started=self.now)

    def pick(self, i: int) -> str | None:
        alive = sorted(self.sidecars)
        return alive[i % len(alive)] if alive else None

    def check(self) -> None:
        spent_and_promised = self.gone + sum((s.exposure(self.now) for s in self.sidecars.values()), D(0))
        assert spent_and_promised <= self.limit

    def inputs(self, missing: frozenset[int]) -> WindowInput:
        pods = [PodInput(uid, None if n in missing else s.report()) for n, (uid, s) in
                enumerate(sorted(self.sidecars.items()))]
        return WindowInput(KEY, self.limit, pods, dict(self.settled))

    def allocate(self, missing: frozenset[int], failed: frozenset[int]) -> Allocation:
        win = self.inputs(missing)
        before = assess(self.allocator.state(KEY), win, self.now, self.config)
        result = self.allocator.allocate(win, self.now)
        assert result.increased <= max(D(0), self.limit - before)  # never beyond what remained
        first_heard = set()
        for p in win.pods:
            if p.report is not None:
                if p.uid not in self.reported:
                    first_heard.add(p.uid)
                self.reported[p.uid] = max(self.reported.get(p.uid, D(0)), p.report.held)
        if result.learning:  # learning mode: nothing new, only what each pod reported holding since restart
            assert result.increased == 0
            assert {g.pod_uid for g in result.grants} == {p.uid for p in win.pods}
            for g in result.grants:
                assert g.granted <= self.reported.get(g.pod_uid, D(0))
                if g.pod_uid in first_heard and self.allocator_knew.get(g.pod_uid) is None:
                    assert g.granted == self.reported[g.pod_uid]  # adopted, not stripped
        for g in result.grants:
            self.allocator_knew[g.pod_uid] = g.granted
        for n, g in enumerate(result.grants):
            if n not in failed:
                side = self.sidecars[g.pod_uid]
                side.held, side.expires = g.granted, g.expires_at
        return result

    def restart(self) -> None:
        self.allocator = LeaseAllocator(self.config, started=self.now)
        self.reported, self.allocator_knew = {}, {}

    def depart(self, uid: str) -> None:
        """The kopf layer's contract: a last pull, then the pod leaves the window."""
        side = self.sidecars.pop(uid)
        self.settled[uid] = side.used
        self.gone += side.used


CONFIGS = st.builds(
    LeaseConfig,
    ttl=st.just(dt.timedelta(seconds=60)),
    learning=st.just(dt.timedelta(days=1)),  # only the early end applies: every pod reports, or no increase
    share_fraction=st.sampled_from([D("0.25"), D("0.5"), D(1)]),
    max_grant_fraction=st.sampled_from([D("0.25"), D("0.5"), D(1)]),
    min_grant=st.sampled_from([D(1), D(10)]),
)


class LeaseWorld(RuleBasedStateMachine):
    """Sidecars and an operator under any interleaving of the events the kopf layer feeds the allocator.

    Tuning is drawn too, so that runs reach the limit within a few rounds; the invariant is checked after
    every step, and the departure and restart rules check their own promises as they happen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.world = World(D(100))

    @initialize(limit=st.integers(1, 600), config=CONFIGS)
    def start(self, limit: int, config: LeaseConfig) -> None:
        self.world = World(D(limit), config)

    @rule()
    def arrive(self) -> None:
        self.world.serial += 1
        self.world.sidecars[f"pod-{self.world.serial:03d}"] = Sidecar()

    @rule(which=st.integers(0, 9))
    def depart(self, which: int) -> None:
        """A pod leaves after its last pull: exactly what it was promised and did not spend is freed."""
        w = self.world
        uid = w.pick(which)
        if uid is None:
            return
        state = w.allocator.state(KEY)
        side = w.sidecars[uid]
        w.settled[uid] = side.used
        before = assess(state, w.inputs(frozenset()), w.now, w.config)
        grant = state.pods.get(uid) if state else None
        # A cut the sidecar has confirmed (it holds no more than its grant) frees the larger grants.
        confirmed = grant is not None and side.held <= grant.granted
        promised = max(grant.granted if confirmed else grant.ceiling(w.now) if grant else D(0), side.held, side.used)
        w.depart(uid)
        assert before - assess(state, w.inputs(frozenset()), w.now, w.config) == promised - side.used

    @rule(which=st.integers(0, 9), amount=st.integers(1, 400))
    def consume(self, which: int, amount: int) -> None:
        uid = self.world.pick(which)
        if uid is not None:
            side = self.world.sidecars[uid]
            side.used += min(D(amount), side.room(self.world.now))

    @rule()
    def spend_everything(self) -> None:
        for side in self.world.sidecars.values():
            side.used += side.room(self.world.now)

    @rule(which=st.integers(0, 9))
    def pull(self, which: int) -> None:
        uid = self.world.pick(which)
        if uid is not None:
            self.world.settled[uid] = self.world.sidecars[uid].used

    @rule()
    def round(self) -> None:
        self.world.allocate(frozenset(), frozenset())

    @rule(missing=st.frozensets(st.integers(0, 6), max_size=3), failed=st.frozensets(st.integers(0, 6), max_size=3))
    def round_with_failures(self, missing: frozenset[int], failed: frozenset[int]) -> None:
        """Some sidecars are not heard from, some pushes do not land."""
        self.world.allocate(missing, failed)

    @rule(which=st.integers(0, 6))
    def round_with_a_pod_unreachable(self, which: int) -> None:
        """The commonest failure: one sidecar neither answers the poll nor receives its push."""
        self.world.allocate(frozenset({which}), frozenset({which}))

    @rule(which=st.integers(0, 6))
    def round_with_a_push_lost(self, which: int) -> None:
        """A sidecar answered the poll but its PUT timed out: it keeps enforcing its previous lease."""
        self.world.allocate(frozenset(), frozenset({which}))

    @rule()
    def restart(self) -> None:
        self.world.restart()

    @rule(silent=st.integers(1, 3))
    def restart_with_a_silent_pod(self, silent: int) -> None:
        """After a restart nothing new is granted while one pod has not reported; once all have, it learned."""
        w = self.world
        w.restart()
        if not w.sidecars:
            return
        for _ in range(silent):
            result = w.allocate(frozenset({0}), frozenset())
            assert result.learning
            assert result.increased == 0
            w.check()
        assert not w.allocate(frozenset(), frozenset()).learning

    @rule(seconds=st.integers(1, 90))
    def tick(self, seconds: int) -> None:
        self.world.now += dt.timedelta(seconds=seconds)

    @invariant()
    def spent_plus_promised_never_exceeds_the_limit(self) -> None:
        self.world.check()


TestSpentPlusPromisedNeverExceedsTheLimit = LeaseWorld.TestCase
TestSpentPlusPromisedNeverExceedsTheLimit.settings = settings(max_examples=200, stateful_step_count=40,
                                                              deadline=None)


# ----- the rules, one by one --------------------------------------------------------------------------------


def test_a_first_round_splits_half_of_the_window_equally_and_keeps_the_rest_in_the_pool() -> None:
    pods = [PodInput(f"p{i}", report(0)) for i in range(4)]
    result = allocate(None, window(pods), T0)
    assert granted(result) == {f"p{i}": D(125) for i in range(4)}
    assert (result.committed, result.remaining, result.increased) == (D(500), D(500), D(500))
    assert {g.expires_at for g in result.grants} == {T0 + dt.timedelta(seconds=60)}


def test_a_pod_that_runs_low_is_served_first_and_gets_more_than_an_idle_one() -> None:
    first = allocate(None, window([PodInput("busy", report(0)), PodInput("idle", report(0))]), T0)
    busy_low = [PodInput("busy", report(250, 240)), PodInput("idle", report(250, 0))]
    second = allocate(first.state, window(busy_low), T0 + dt.timedelta(seconds=5))
    assert granted(second)["busy"] > D(250)
    assert granted(second)["idle"] == D(250)


def test_when_the_pool_runs_dry_idle_pods_are_cut_back_for_the_low_ones() -> None:
    cfg = LeaseConfig(max_grant_fraction=D(1), share_fraction=D(1))
    state = allocate(None, window([PodInput("a", report(0)), PodInput("b", report(0))], limit=100), T0, cfg).state
    # a: 45 of 50 used (low); b: 10 of 50 used; a pod that has gone spent 5: committed 105, nothing left.
    result = allocate(state, window([PodInput("a", report(50, 45)), PodInput("b", report(50, 10))], limit=100,
                                    settled={"gone": 5}), T0, cfg)
    assert result.increased == 0
    # free = -5 + 5 + 40 = 40, level 20: b keeps what it used plus one level; the rest is asked back.
    assert granted(result) == {"a": D(50), "b": D(30)}
    assert result.reclaimed == D(20)
    assert result.committed == D(105)  # until b's 50 expires, the cut may not have landed


def test_increments_shrink_as_the_window_nears_its_limit() -> None:
    """One pod spending everything it gets: each top-up is smaller than the last, none beyond what remains."""
    cfg = LeaseConfig()
    state = None
    used, grants = 0, list[Decimal]()
    for i in range(40):
        win = window([PodInput("p", report(int(grants[-1]) if grants else 0, used))], limit=1000)
        result = allocate(state, win, T0 + dt.timedelta(seconds=i), cfg)
        state = result.state
        grants.append(result.grants[0].granted)
        used = int(grants[-1])  # spends it all before the next round
    steps = [b - a for a, b in itertools.pairwise(grants) if b > a]
    assert grants[-1] <= 1000
    assert grants[-1] >= 990
    assert steps == sorted(steps, reverse=True)
    assert steps[0] <= 250


def test_nothing_is_granted_beyond_what_departed_pods_and_settled_usage_left() -> None:
    pods = [PodInput("a", report(0)), PodInput("b", report(0))]
    result = allocate(None, window(pods, limit=1000, settled={"gone-1": 600, "gone-2": 390}), T0)
    assert sum(granted(result).values()) <= D(10)
    assert result.committed <= D(1000)
    over = allocate(None, window(pods, limit=1000, settled={"gone": 1200}), T0)
    assert sum(granted(over).values()) == 0
    assert over.remaining == D(-200)


def test_a_deleted_pod_gives_back_what_it_had_not_used() -> None:
    first = allocate(None, window([PodInput("a", report(0)), PodInput("b", report(0))]), T0)
    assert granted(first) == {"a": D(250), "b": D(250)}
    # b used 100 of its 250, had its last pull, and is gone: 150 returns to the pool, 100 stays spent.
    gone = window([PodInput("a", report(250, 0))], settled={"b": 100})
    assert assess(first.state, gone, T0) == D(350)  # a's 250 + b's 100 spent
    after = allocate(first.state, gone, T0)
    assert [g.pod_uid for g in after.grants] == ["a"]
    assert "b" in after.state.departed


def test_a_draining_pod_keeps_its_grant_but_gets_no_more() -> None:
    first = allocate(None, window([PodInput("a", report(0)), PodInput("b", report(0))]), T0)
    result = allocate(first.state, window([PodInput("a", report(250, 240), draining=True),
                                           PodInput("b", report(250, 0))]), T0)
    assert granted(result)["a"] == D(250)


def test_a_pod_not_heard_from_keeps_its_grant_and_counts_in_full() -> None:
    first = allocate(None, window([PodInput("a", report(0)), PodInput("b", report(0))]), T0)
    result = allocate(first.state, window([PodInput("a"), PodInput("b", report(250, 240))]), T0)
    assert granted(result)["a"] == D(250)
    assert granted(result)["b"] > D(250)
    assert result.committed == D(250) + granted(result)["b"]


def test_a_lowered_limit_takes_back_unused_grants_from_every_pod() -> None:
    first = allocate(None, window([PodInput("a", report(0)), PodInput("b", report(0))]), T0)
    assert granted(first) == {"a": D(250), "b": D(250)}
    # Nobody runs low, yet 500 is promised against a limit lowered to 300.
    lowered = allocate(first.state, window([PodInput("a", report(250, 50)), PodInput("b", report(250, 80))],
                                           limit=300), T0)
    # Free: 300 - 500 promised + 370 unused = 170; each keeps what it spent plus a quarter of that (42).
    assert granted(lowered) == {"a": D(92), "b": D(122)}
    assert lowered.reclaimed == 286
    later = allocate(lowered.state, window([PodInput("a", report(92, 50)), PodInput("b", report(122, 80))],
                                           limit=300), T0 + dt.timedelta(seconds=61))
    assert later.committed <= 300, "once both report the cut grants, what is promised fits the new limit"


def test_a_cut_counts_as_held_until_the_pod_reports_the_smaller_grant_then_goes_to_the_low_pod() -> None:
    cfg = LeaseConfig(ttl=dt.timedelta(seconds=60), max_grant_fraction=D(1), share_fraction=D(1))
    first = allocate(None, window([PodInput("idle", report(0)), PodInput("busy", report(0))], limit=60), T0, cfg)
    assert granted(first) == {"idle": D(30), "busy": D(30)}
    t1 = T0 + dt.timedelta(seconds=10)
    cut = allocate(first.state, window([PodInput("idle", report(30)), PodInput("busy", report(30, 30))], limit=60),
                   t1, cfg)
    assert granted(cut) == {"idle": D(15), "busy": D(30)}
    assert cut.reclaimed == D(15)
    assert cut.committed == D(60)
    assert cut.state.pods["idle"].ceiling(t1) == D(30)
    # The push landed (idle reports 15): the 30 it no longer holds is free, and busy gets what was cut.
    t2 = T0 + dt.timedelta(seconds=20)
    after = allocate(cut.state, window([PodInput("idle", report(15)), PodInput("busy", report(30, 30))], limit=60),
                     t2, cfg)
    assert cut.state.pods["idle"].ceiling(t2) == D(30), "not yet confirmed when the cut went out"
    assert after.state.pods["idle"].ceiling(t2) == D(15)
    assert granted(after)["busy"] > D(30)
    assert after.committed <= D(60)


def test_a_cut_pod_that_goes_silent_still_counts_at_its_larger_grant_even_after_it_expired() -> None:
    """A sidecar keeps spending an expired grant (an outage must not stop calls), so expiry frees nothing."""
    cfg = LeaseConfig(ttl=dt.timedelta(seconds=60), max_grant_fraction=D(1), share_fraction=D(1))
    first = allocate(None, window([PodInput("idle", report(0)), PodInput("busy", report(0))], limit=60), T0, cfg)
    t1 = T0 + dt.timedelta(seconds=10)
    cut = allocate(first.state, window([PodInput("idle", report(30)), PodInput("busy", report(30, 30))], limit=60),
                   t1, cfg)
    assert granted(cut)["idle"] == D(15)
    # The cut's push was lost and idle is not heard from: it may still spend 30, so busy gets nothing.
    silent = allocate(cut.state, window([PodInput("idle"), PodInput("busy", report(30, 30))], limit=60), t1, cfg)
    assert silent.committed == D(60)
    assert granted(silent)["busy"] == D(30)
    later = T0 + dt.timedelta(minutes=5)  # long after the 30 expired
    still = allocate(silent.state, window([PodInput("idle"), PodInput("busy", report(30, 30))], limit=60), later, cfg)
    assert still.committed == D(60)
    assert granted(still)["busy"] == D(30)


def test_a_pod_holding_more_than_it_was_granted_counts_at_what_it_holds() -> None:
    """After a restart a pod missed the first learning round (granted 0, push lost), then reports its old 50."""
    cfg = LeaseConfig(ttl=dt.timedelta(seconds=60), max_grant_fraction=D(1), share_fraction=D(1))
    allocator = LeaseAllocator(cfg, started=T0)
    assert allocator.allocate(window([PodInput("a"), PodInput("b", report(50, 10))], limit=100), T0).learning
    result = allocator.allocate(window([PodInput("a", report(50)), PodInput("b", report(50, 10))], limit=100), T0)
    assert not result.learning
    assert result.committed <= D(100)
    assert granted(result)["b"] + D(50) <= D(100)  # a's push may be lost again: its 50 stays promised


def test_learning_mode_renews_what_sidecars_report_and_grants_nothing_new() -> None:
    cfg = LeaseConfig(ttl=dt.timedelta(seconds=60), end_learning_early=False)
    allocator = LeaseAllocator(cfg, started=T0)
    pods = [PodInput("a", report(300, 100)), PodInput("b", report(0)), PodInput("c")]
    result = allocator.allocate(window(pods), T0 + dt.timedelta(seconds=30))
    assert result.learning
    assert granted(result) == {"a": D(300), "b": D(0), "c": D(0)}
    later = allocator.allocate(window(pods), T0 + dt.timedelta(seconds=60))
    assert not later.learning
    assert granted(later)["b"] > 0


def test_learning_mode_ends_early_once_every_pod_of_the_window_has_reported() -> None:
    allocator = LeaseAllocator(LeaseConfig(learning=dt.timedelta(minutes=5)), started=T0)
    assert allocator.allocate(window([PodInput("a", report(100)), PodInput("b")]), T0).learning
    result = allocator.allocate(window([PodInput("a", report(100)), PodInput("b", report(50))]), T0)
    assert not result.learning
    assert granted(result)["a"] >= D(100)
    assert granted(result)["b"] > D(50)


def test_a_new_period_starts_from_a_clean_slate() -> None:
    allocator = LeaseAllocator(LeaseConfig(learning=dt.timedelta(seconds=60)), started=T0 - dt.timedelta(hours=1))
    allocator.allocate(window([PodInput("a", report(0))], settled={"a": 900}), T0)
    tomorrow = LeaseKey(KEY.budget, KEY.window, None, KEY.period_start + dt.timedelta(days=1))
    result = allocator.allocate(WindowInput(tomorrow, D(1000), [PodInput("a", report(0))]), T0)
    assert granted(result)["a"] == D(250)
    assert result.grants[0].key == tomorrow


def test_config_rejects_a_learning_period_shorter_than_a_lease() -> None:
    with pytest.raises(ValueError, match="learning"):
        LeaseConfig(ttl=dt.timedelta(seconds=60), learning=dt.timedelta(seconds=30))
    with pytest.raises(ValueError, match="share_fraction"):
        LeaseConfig(share_fraction=D(0))


def test_dollar_windows_are_granted_in_micro_dollars() -> None:
    limit = Limit(name="usd", period="Day", costUSD="10.00")
    assert quantum_for(limit) == USD_QUANTUM
    pods = [PodInput(f"p{i}", report(0)) for i in range(3)]
    result = allocate(None, WindowInput(KEY, D("10.00"), pods, {}, USD_QUANTUM), T0)
    assert all(g.granted == D("1.666666") for g in result.grants)


def test_reports_are_read_from_the_sidecar_snapshot_for_the_same_period_only() -> None:
    entry = {"name": "daily", "key": None, "unit": "tokens", "used": "120", "reserved": "30", "limit": "250",
             "percent": 60, "periodStart": KEY.period_start.isoformat(),
             "lease": {"granted": "250", "remaining": "100", "low": False, "expiresAt": T0.isoformat()}}
    assert PodReport.from_sidecar(KEY, [WindowReport.model_validate(entry)]) == PodReport(
        held=D(250), used=D(120), reserved=D(30), low=False)
    assert KEY.period_start is not None
    yesterday = {**entry, "periodStart": (KEY.period_start - dt.timedelta(days=1)).isoformat()}
    assert PodReport.from_sidecar(KEY, [WindowReport.model_validate(yesterday)]) == PodReport()
    assert PodReport.from_sidecar(KEY, []) == PodReport()


def test_the_keys_of_a_per_key_window_fold_into_their_fullest_one() -> None:
    def entry(key: str, used: str, reserved: str, low: bool) -> WindowReport:
        return WindowReport.model_validate({
            "name": "daily", "key": key, "unit": "tokens", "used": used, "reserved": reserved, "limit": "250",
            "percent": 0, "periodStart": KEY.period_start.isoformat() if KEY.period_start else None,
            "lease": {"granted": "250", "remaining": "0", "low": low, "expiresAt": T0.isoformat()}})
    entries = [entry("alice", "100", "20", False), entry("bob", "90", "60", True), entry("carol", "5", "0", False)]
    assert PodReport.from_sidecar(KEY, entries) == PodReport(held=D(250), used=D(90), reserved=D(60), low=True)


def test_a_rolling_window_counts_current_use_and_forgets_a_departed_pod_one_length_later() -> None:
    hour = dt.timedelta(hours=1)

    def rounds(rolling: dt.timedelta | None) -> tuple[Allocation, Allocation]:
        key = LeaseKey("team-a/shared", "burst", None, None if rolling else KEY.period_start)
        first = allocate(None, WindowInput(key, D(1000), [PodInput("a", report(0)), PodInput("b", report(0))],
                                           rolling=rolling), T0)
        full = allocate(first.state, WindowInput(key, D(1000), [PodInput("a", report(250, 250)),
                                                                PodInput("b", report(250, 250))], rolling=rolling), T0)
        # An hour on, the calls have left a rolling window: both pods report nothing in it.
        aged = allocate(full.state, WindowInput(key, D(1000), [PodInput(u, report(int(g), 0, low=False))
                                                               for u, g in granted(full).items()],
                                                rolling=rolling), T0 + hour)
        return full, aged

    full, aged = rounds(hour)
    assert granted(full) == {"a": D(375), "b": D(375)}
    assert aged.state.pods["a"].consumed == 0, "room came back"
    _, calendar = rounds(None)
    assert calendar.state.pods["a"].consumed == 250, "a calendar period keeps its use"

    key = LeaseKey("team-a/shared", "burst", None, None)
    left = allocate(full.state, WindowInput(key, D(1000), [PodInput("a", report(375, 250))], rolling=hour), T0)
    assert left.state.departed == {"b": D(250)}, "b left with 250 still inside the window"
    assert left.committed == granted(left)["a"] + 250
    held = int(granted(left)["a"])
    later = allocate(left.state, WindowInput(key, D(1000), [PodInput("a", report(held, 0))], rolling=hour), T0 + hour)
    assert later.state.departed == {}, "b's use left the window"
    assert later.committed == granted(later)["a"]


async def test_a_grant_is_a_lease_the_sidecar_enforces_as_its_whole_window() -> None:
    """The contract end to end: Grant -> effective policy -> the sidecar admits up to the grant, then refuses."""
    spec = TokenBudgetSpec.model_validate({"selector": {}, "timeZone": "Australia/Sydney",
                                           "limits": [{"name": "daily", "period": "Day", "tokens": 100_000}]})
    view = BudgetView(namespace="team-a", name="shared", spec=spec, uid="u", generation=1)
    now = dt.datetime(2026, 11, 23, 13, 30, tzinfo=dt.UTC)  # 00:30 in Sydney (UTC+11)
    assert spec.limits is not None
    key = LeaseKey(view.key, "daily", None, lease_period_start(spec.limits[0], spec.time_zone, now))
    assert key.period_start == dt.datetime(2026, 11, 23, 13, tzinfo=dt.UTC)
    result = allocate(None, WindowInput(key, D(100_000), [PodInput("p", PodReport())]), now,
                      LeaseConfig(max_grant_fraction=D("0.003")))
    assert result.grants[0].granted == D(300)
    policy = effective_policy(PodView("team-a", "p", "p"), [view], [], "/keys",
                              leases={view.key: [result.grants[0].lease()]})
    clock = ManualClock(now)
    adm = Admission(policy, clock, PriceBook(policy.prices), default_output_tokens=100, max_throttle_delay_s=30,
                    reservation_ttl_s=3600)
    for _ in range(3):
        await run_call(adm, clock, 50, 50)  # 100 tokens each: 300 in all, the whole grant
    with pytest.raises(Refused):
        await run_call(adm, clock, 50, 50)


def test_each_grant_carries_the_fleets_consumption_and_the_pods_part_of_it() -> None:
    """What the sidecars' percent is built from (issue 13): departed pods' spend counts too."""
    first = allocate(None, window([PodInput("a", report(0, 100)), PodInput("b", report(0, 300)),
                                   PodInput("c", report(0, 50))]), T0)
    assert first.consumed == D(450)
    gone = allocate(first.state, window([PodInput("a", report(0, 120)), PodInput("b", report(0, 300))]),
                    T0 + dt.timedelta(seconds=2))
    assert gone.consumed == D(120 + 300 + 50)
    lease = next(g for g in gone.grants if g.pod_uid == "a").lease()
    assert (lease.fleet_used, lease.own_used) == (D(470), D(120))
