"""Leases: one shared budget window split between the sidecars that use it, Doorman-style.

A sidecar admits against its lease as if the lease were the whole limit (budget.py: the window's amount
becomes `Lease.granted`), and counts everything it admitted in the lease's period. A grant is therefore
*cumulative for the period*: "this pod may have spent up to `granted` by the period's end". Raising it
hands out more; lowering it takes back what the pod has not yet used.

The guarantee: what every pod can still spend under what it holds, plus what has been spent, never
exceeds the limit. Per window (budget, limit, key, period) the allocator computes

    consumed_i  = max(settled_i from usage pulls, used_i + reserved_i the sidecar reports, last seen)
    exposure_i  = max(grant_i, any larger grant issued to it that has not expired, held_i it reports,
                      consumed_i)                      — the most pod i can end up having spent
    committed   = Σ spent by departed pods (settled, or their last report) + Σ exposure_i
    pool        = limit - committed                    — never granted beyond this

and the algorithm, in five lines:

    1. Split equally: each active pod's unused allowance (grant - consumed) is topped up to a refill level
       = share_fraction * (pool + Σ unused) / pods, so part of what remains stays in the pool.
    2. Low pods first: a pod that reports low (or holds nothing) is served before the others and gets
       a further refill level from the pool on top of what it has.
    3. Shrink near the limit: one increment is at most max_grant_fraction * pool (and at least
       min_grant), so late in the period no pod can take everything that is left.
    4. Take back: a departed pod's unused grant returns to the pool at once; when a low pod cannot be
       served, idle pods holding more than the refill level are cut to consumed + level, and when the
       limit was lowered below what is promised, every pod is (the cut counts as still held until the
       larger grant expires: a push may fail, and values alone cannot tell an old grant from a new one).
    5. Restart (learning mode): a new allocator knows nothing, so for `learning` (≥ the lease TTL) it
       only renews what each sidecar reports holding; it ends early once every pod of the window has
       reported, because unlike Doorman the operator knows the whole membership from the API.

Caller's contract (the kopf layer): pull a departing pod's usage one last time before leaving it out of
`pods` (a pod that vanishes unpulled takes its unpulled usage with it, and that much can be overrun);
build `pods` only from a fully listed pod index (kopf populates indexes before handlers run); serialize
pushes per pod, so an older grant never lands after a newer one; report `held` only for leases of the
same period (`PodReport.from_sidecar`). When `learning` runs out with a pod never heard from since the
restart, that pod counts only at what was pulled from it: its earlier lease has expired by then (learning
≥ ttl), so under Closed it admits nothing more, but what it admitted and nobody pulled is the one overrun
learning mode cannot see (with early exit, this needs a pod unreachable for the whole learning period).
Under failMode Open a sidecar with an expired lease admits
without checking the shared window, so the bound holds only while leases are renewed (or with Closed).

Rolling windows have no period: their grant is a *level* (the pod's use inside the sliding window may
not exceed it, `Lease.period_start` None), so `consumed_i` is the pod's current in-window use, which falls
as calls age out, and a departed pod's spend stops counting one window length after it left.

Per-User/per-Model windows get one lease per pod that every key shares (`LeaseKey.key` None; the sidecar
applies it to each key separately). For each key k, what pods can spend is Σ_i max(grant_i, spent_i(k))
≤ Σ_i max(grant_i, max_k spent_i(k)), so the allocator runs unchanged on `consumed_i = max over keys`
(`PodReport.from_sidecar` folds the keys) and the limit holds for every key at once, whatever their
number. The price: one heavy key makes its pod "low" and raises that pod's grant for all its keys.

Pure functions over dataclasses; `LeaseAllocator` only keeps the per-window state between calls and is
never persisted: restarting it *is* the recovery path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from tokenbudget_api.admin import WindowReport
from tokenbudget_api.policy import Lease
from tokenbudget_api.tokenbudget import Limit
from tokenbudget_api.windows import ManualClock, as_utc, window_for

ZERO = Decimal(0)
USD_QUANTUM = Decimal("0.000001")  # grants in dollars are whole micro-dollars


# ----- inputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseKey:
    """What a grant is for: one window (or one key of a per-User/per-Model window) in one period."""

    budget: str  # "namespace/name"
    window: str  # the limit's name
    key: str | None  # one user or model; None for the whole window (per-key limits: every key)
    period_start: dt.datetime | None  # as the sidecar computes it (`lease_period_start`); None when rolling


def lease_period_start(limit: Limit, tz_name: str, now: dt.datetime) -> dt.datetime | None:
    """The period start the sidecar compares a lease against (`WindowCounter.period_start`), at `now`;
    None for a rolling window, whose lease is a level with no period."""
    if limit.period is None:
        return None
    return window_for(limit, tz_name, ManualClock(now)).period_start(now)


def lease_periods(limit: Limit, tz_name: str, now: dt.datetime, ahead: dt.timedelta) -> list[dt.datetime | None]:
    """The periods to grant for at `now`: the current one, and the next once it starts within `ahead`.

    Granting the next period before it begins lets each sidecar switch to it on its own at the boundary
    (budget.Window.lease); granting only after it began left every pod refusing until the next round.
    """
    if limit.period is None:
        return [None]
    counter = window_for(limit, tz_name, ManualClock(now))
    current, end = counter.period_start(now), counter.resets_at(now)
    return [current, end] if end is not None and end - now <= ahead else [current]


def quantum_for(limit: Limit) -> Decimal:
    """Grant granularity in the limit's unit: whole tokens or requests, micro-dollars."""
    return USD_QUANTUM if limit.cost_usd is not None else Decimal(1)


def _same_period(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and as_utc(a) == b)


@dataclass(frozen=True)
class PodReport:
    """What a sidecar says about one window: its lease, its use, and whether it runs low.

    `held` is the lease amount it applies *for this period* (0 if none, or one for another period).
    """

    held: Decimal = ZERO
    used: Decimal = ZERO
    reserved: Decimal = ZERO
    low: bool = False

    @classmethod
    def from_sidecar(
        cls, key: LeaseKey, entries: Iterable[WindowReport], applied: Iterable[Lease] = ()
    ) -> PodReport:
        """From the window's `windows[]` entries in the sidecar's GET /budgets (none: not used yet; one per
        key for the lease every key of a per-key limit shares) and the window's leases in the policy version
        the sidecar reports as applied (this period's, maybe the next one's). Keys fold into the fullest
        one: the grant bounds each key separately.

        Use from an entry whose periodStart is not `key.period_start` is for another period, so it is
        ignored; a lease for another period gives no right in this one (the sidecar treats it as stale).
        """
        held = max((lease.granted for lease in applied if _same_period(lease.period_start, key.period_start)),
                   default=ZERO)
        used = reserved = ZERO
        low = False
        for entry in entries:
            if key.period_start is not None and as_utc(entry.period_start) != key.period_start:
                continue
            if entry.lease is not None:
                held = max(held, entry.lease.granted)
                low = low or entry.lease.low
            if entry.used + entry.reserved > used + reserved:
                used, reserved = entry.used, entry.reserved
        return cls(held=held, used=used, reserved=reserved, low=low)


@dataclass(frozen=True)
class PodInput:
    """An active pod using the window. `report` None: not heard from this round (unreachable, poll failed).

    `draining`: the pod is terminating; it keeps its grant (in-flight calls settle) but gets no more.
    """

    uid: str
    report: PodReport | None = None
    draining: bool = False


@dataclass(frozen=True)
class WindowInput:
    """One window's limit, its active pods and what usage pulls settled per pod in this period.

    `settled` may name pods that are gone: what they spent still counts against the limit (for a rolling
    window: what is still inside it). `rolling`: the window's length, for a rolling window.
    """

    key: LeaseKey
    limit: Decimal
    pods: Sequence[PodInput]
    settled: Mapping[str, Decimal] = field(default_factory=dict)
    quantum: Decimal = Decimal(1)
    rolling: dt.timedelta | None = None


@dataclass(frozen=True)
class LeaseConfig:
    """Tuning of the allocator. Fractions are Decimals in (0, 1]."""

    ttl: dt.timedelta = dt.timedelta(seconds=60)  # a grant's lifetime; renewed on every allocation
    learning: dt.timedelta | None = None  # learning mode after start; None = ttl (never shorter)
    end_learning_early: bool = True  # leave learning once every pod of a window has reported
    share_fraction: Decimal = Decimal("0.5")  # refill level as a share of an equal split of what is free
    max_grant_fraction: Decimal = Decimal("0.25")  # one increment at most this share of the pool
    min_grant: Decimal = Decimal(1)  # smallest increment worth a push (in the window's unit)
    low_fraction: Decimal = Decimal("0.2")  # a pod with less than this share of its grant unused is low

    def __post_init__(self) -> None:
        for name in ("share_fraction", "max_grant_fraction", "low_fraction"):
            value = getattr(self, name)
            if not ZERO < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], not {value}")
        if self.min_grant < 0 or self.ttl <= dt.timedelta(0):
            raise ValueError("min_grant must be ≥ 0 and ttl positive")
        if self.learning is not None and self.learning < self.ttl:
            raise ValueError("learning must last at least one ttl, so every earlier grant has expired")

    @property
    def learning_period(self) -> dt.timedelta:
        return self.ttl if self.learning is None else self.learning


# ----- state and outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodGrant:
    """What the allocator last decided for one pod, and what it must still assume the pod may hold."""

    granted: Decimal  # the latest grant (cumulative for the period)
    expires_at: dt.datetime  # of the latest grant
    consumed: Decimal = ZERO  # the most this pod was seen to have spent (calendar: never decreases)
    larger: tuple[tuple[Decimal, dt.datetime], ...] = ()  # earlier, larger grants until they expire

    def ceiling(self, now: dt.datetime) -> Decimal:
        """The largest grant the sidecar may still be applying at `now`."""
        return max([self.granted, *(amount for amount, expires in self.larger if expires > now)])


@dataclass(frozen=True)
class WindowLeases:
    """The allocator's memory of one window in one period."""

    key: LeaseKey
    pods: Mapping[str, PodGrant] = field(default_factory=dict)
    departed: Mapping[str, Decimal] = field(default_factory=dict)  # last known spend of pods that left
    departed_at: Mapping[str, dt.datetime] = field(default_factory=dict)  # when (ages out of a rolling window)


@dataclass(frozen=True)
class Grant:
    """One pod's lease for one window: push it inside the pod's policy (`effective.resolve(leases=...)`)."""

    pod_uid: str
    key: LeaseKey
    granted: Decimal
    expires_at: dt.datetime

    def lease(self) -> Lease:
        return Lease(window=self.key.window, key=self.key.key, granted=self.granted,
                     period_start=self.key.period_start, expires_at=self.expires_at)


@dataclass(frozen=True)
class Allocation:
    """The outcome of one round for one window."""

    key: LeaseKey
    grants: tuple[Grant, ...]  # one per active pod, by uid
    state: WindowLeases
    committed: Decimal  # spent + what every pod may still spend under what it may hold, after this round
    limit: Decimal
    learning: bool
    increased: Decimal = ZERO  # handed out this round
    reclaimed: Decimal = ZERO  # asked back from idle pods this round

    @property
    def remaining(self) -> Decimal:
        """Unallocated: what a later round may still hand out (negative once overrun)."""
        return self.limit - self.committed

    def grant(self, uid: str) -> Grant | None:
        return next((g for g in self.grants if g.pod_uid == uid), None)


# ----- the algorithm -----------------------------------------------------------------------------------------


@dataclass
class _Pod:
    """Working view of one active pod during a round."""

    uid: str
    report: PodReport | None
    draining: bool
    base: Decimal  # the grant going out
    consumed: Decimal
    larger: list[tuple[Decimal, dt.datetime]]
    held: Decimal  # what it reports holding (0 when unreported)
    expires_at: dt.datetime | None  # of our latest grant to it; None when adopted from its report
    low: bool = False

    @property
    def unused(self) -> Decimal:
        return max(ZERO, self.base - self.consumed)

    def exposure(self, now: dt.datetime) -> Decimal:
        alive = [amount for amount, expires in self.larger if expires > now]
        return max([self.base, self.held, self.consumed, *alive])


def _floor(value: Decimal, quantum: Decimal) -> Decimal:
    return (value / quantum).to_integral_value(rounding=ROUND_FLOOR) * quantum


def _ceil(value: Decimal, quantum: Decimal) -> Decimal:
    return (value / quantum).to_integral_value(rounding=ROUND_CEILING) * quantum


@dataclass
class _Departed:
    spent: dict[str, Decimal]
    at: dict[str, dt.datetime]


def _observe(
    previous: WindowLeases | None, window: WindowInput, config: LeaseConfig, now: dt.datetime
) -> tuple[list[_Pod], _Departed]:
    """Merge the previous round's memory with this round's reports; returns pods and departed spend."""
    prev = previous if previous is not None and previous.key == window.key else None
    uids = [p.uid for p in window.pods]
    if len(uids) != len(set(uids)):
        raise ValueError("a pod is listed twice")
    departed = _Departed(dict(prev.departed), dict(prev.departed_at)) if prev else _Departed({}, {})
    if prev is not None:
        for uid, left in prev.pods.items():
            if uid not in uids:  # its unused grant is freed
                departed.spent[uid] = max(departed.spent.get(uid, ZERO), left.consumed)
                departed.at.setdefault(uid, now)
    if window.rolling is not None:  # what a departed pod spent leaves a rolling window one length later
        for uid in [u for u, at in departed.at.items() if at + window.rolling <= now]:
            departed.spent.pop(uid, None)
            departed.at.pop(uid)
    pods: list[_Pod] = []
    for p in sorted(window.pods, key=lambda x: x.uid):
        departed.spent.pop(p.uid, None)
        departed.at.pop(p.uid, None)
        g = prev.pods.get(p.uid) if prev else None
        rep = p.report
        settled = window.settled.get(p.uid, ZERO)
        if window.rolling is not None:  # current in-window use: it falls as calls age out
            consumed = max(settled, rep.used + rep.reserved if rep else (g.consumed if g else ZERO))
        else:
            consumed = max(settled, g.consumed if g else ZERO, rep.used + rep.reserved if rep else ZERO)
        # A pod we have no memory of (new, or we restarted) holds what it says it holds: adopt it.
        base = g.granted if g is not None else (rep.held if rep is not None else ZERO)
        pod = _Pod(uid=p.uid, report=rep, draining=p.draining, base=base, consumed=consumed,
                   larger=list(g.larger) if g else [], held=rep.held if rep else ZERO,
                   expires_at=g.expires_at if g else None)
        pod.low = base <= 0 or pod.unused < base * config.low_fraction or (rep is not None and rep.low)
        pods.append(pod)
    return pods, departed


def _committed(pods: Sequence[_Pod], departed: _Departed, window: WindowInput, now: dt.datetime) -> Decimal:
    active = {p.uid for p in pods}
    gone = (set(window.settled) | set(departed.spent)) - active
    spent = sum((max(window.settled.get(uid, ZERO), departed.spent.get(uid, ZERO)) for uid in gone), ZERO)
    return spent + sum((p.exposure(now) for p in pods), ZERO)


def assess(previous: WindowLeases | None, window: WindowInput, now: dt.datetime,
           config: LeaseConfig | None = None) -> Decimal:
    """`committed` for `window` without granting anything: spent + what every pod may still spend."""
    now = as_utc(now)
    pods, departed = _observe(previous, window, config or LeaseConfig(), now)
    return _committed(pods, departed, window, now)


def allocate(
    previous: WindowLeases | None,
    window: WindowInput,
    now: dt.datetime,
    config: LeaseConfig | None = None,
    *,
    learning: bool = False,
) -> Allocation:
    """One round for one window: grants for every active pod and the state to pass to the next round.

    In learning mode grants only renew what pods report holding (zero for pods not heard from).
    """
    cfg = config or LeaseConfig()
    now = as_utc(now)
    q = window.quantum
    pods, departed = _observe(previous, window, cfg, now)
    committed = _committed(pods, departed, window, now)
    pool = window.limit - committed
    increased = reclaimed = ZERO

    eligible = [p for p in pods if p.report is not None and not p.draining]
    if not learning and eligible:
        free = pool + sum((p.unused for p in eligible), ZERO)
        level = max(ZERO, _floor(free * cfg.share_fraction / len(eligible), q))
        cap = max(_floor(pool * cfg.max_grant_fraction, q), _ceil(cfg.min_grant, q))
        left = max(pool, ZERO)
        starved = False  # a low pod the pool could not serve: time to take back from idle ones
        for p in sorted(eligible, key=lambda x: (not x.low, x.unused, x.uid)):
            want = max(level - p.unused, ZERO)
            if p.low:
                want = max(want, level, _ceil(cfg.min_grant, q))
            if want <= 0:
                continue
            if p.low and left < min(want, cap):
                starved = True
            inc = _floor(min(want, cap, left), q)
            if inc <= 0:
                continue
            p.base += inc
            left -= inc
            increased += inc
        over = pool < 0  # the limit was lowered below what is promised: every pod gives back, low or not
        if starved or over:
            for p in eligible:
                if (p.low and not over) or p.unused <= level:
                    continue
                target = min(p.base, _ceil(p.consumed + level, q))
                if target < p.base:
                    reclaimed += p.base - target
                    # Until the grant being cut expires, the sidecar may still apply it (a push can fail).
                    p.larger.append((p.base, p.expires_at or now + cfg.ttl))
                    p.base = target

    expires = now + cfg.ttl
    grants = tuple(Grant(p.uid, window.key, p.base, expires) for p in pods)
    state = WindowLeases(
        key=window.key,
        pods={p.uid: PodGrant(granted=p.base, expires_at=expires, consumed=p.consumed,
                              larger=tuple((a, e) for a, e in p.larger if e > now and a > p.base))
              for p in pods},
        departed=departed.spent,
        departed_at=departed.at,
    )
    return Allocation(key=window.key, grants=grants, state=state,
                      committed=_committed(pods, departed, window, now), limit=window.limit,
                      learning=learning, increased=increased, reclaimed=reclaimed)


class LeaseAllocator:
    """Per-window memory between rounds, and learning mode since this allocator (this operator) started.

    Create a new one on operator start: it knows no grants, so it learns them from the sidecars.
    """

    def __init__(self, config: LeaseConfig | None = None, *, started: dt.datetime) -> None:
        self.config = config or LeaseConfig()
        self.learning_until = as_utc(started) + self.config.learning_period
        self._windows: dict[LeaseKey, WindowLeases] = {}
        self._learned: set[LeaseKey] = set()

    def learning(self, window: WindowInput, now: dt.datetime) -> bool:
        """Whether `window` is still in learning mode at `now`."""
        if as_utc(now) >= self.learning_until:
            self._learned.clear()  # no longer needed: every window has left learning mode
            return False
        if window.key in self._learned:
            return False
        if self.config.end_learning_early and all(p.report is not None for p in window.pods):
            self._learned.add(window.key)
            return False
        return True

    def allocate(self, window: WindowInput, now: dt.datetime) -> Allocation:
        """One round for `window`; each period has its own state, so a new period starts from a clean slate
        (the next period may be allocated while the current one still runs)."""
        result = allocate(self._windows.get(window.key), window, now, self.config,
                          learning=self.learning(window, now))
        self._windows[window.key] = result.state
        return result

    def state(self, key: LeaseKey) -> WindowLeases | None:
        return self._windows.get(key)

    def retain(self, keys: set[LeaseKey]) -> None:
        """Forget every window (a deleted budget's, a period that ended) not allocated in the last round."""
        for key in [k for k in self._windows if k not in keys]:
            del self._windows[key]

    def outstanding(self, now: dt.datetime) -> Decimal:
        """Σ unused grants over every window (for the leases-outstanding metric)."""
        return sum((max(ZERO, g.ceiling(now) - g.consumed) for w in self._windows.values()
                    for g in w.pods.values()), ZERO)


__all__ = [
    "USD_QUANTUM",
    "Allocation",
    "Grant",
    "LeaseAllocator",
    "LeaseConfig",
    "LeaseKey",
    "PodGrant",
    "PodInput",
    "PodReport",
    "WindowInput",
    "WindowLeases",
    "allocate",
    "assess",
    "lease_period_start",
    "lease_periods",
    "quantum_for",
]
