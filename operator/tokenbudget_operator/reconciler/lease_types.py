"""The allocator's vocabulary: which window (`LeaseKey`), what each pod reports and holds, the tuning
(`LeaseConfig`) and what an allocation returns. leases.py explains the algorithm that uses them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

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
    (the sidecar's windows.Window.lease); granting only after it began left every pod refusing until the next round.
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
    larger: tuple[tuple[Decimal, dt.datetime], ...] = ()  # earlier, larger grants until the pod confirms a cut

    def ceiling(self, now: dt.datetime) -> Decimal:
        """The largest grant the sidecar may still be applying at `now`."""
        return max([self.granted, *(amount for amount, _ in self.larger)])


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
    consumed: Decimal = ZERO  # this pod's consumption as the round counted it
    fleet_consumed: Decimal | None = None  # every pod's, this one included (Allocation.consumed)

    def lease(self) -> Lease:
        return Lease(window=self.key.window, key=self.key.key, granted=self.granted,
                     period_start=self.key.period_start, expires_at=self.expires_at,
                     fleet_used=self.fleet_consumed, own_used=self.consumed if self.fleet_consumed is not None
                     else None)


@dataclass(frozen=True)
class Allocation:
    """The outcome of one round for one window."""

    key: LeaseKey
    grants: tuple[Grant, ...]  # one per active pod, by uid
    state: WindowLeases
    committed: Decimal  # spent + what every pod may still spend under what it may hold, after this round
    consumed: Decimal  # what every pod together had consumed at this round (departed pods included)
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


__all__ = ["USD_QUANTUM", "ZERO", "Allocation", "Grant", "LeaseConfig", "LeaseKey", "PodGrant", "PodInput", "PodReport",
           "WindowInput", "WindowLeases", "lease_period_start", "lease_periods", "quantum_for"]
