"""Leases: one shared budget window split between the sidecars that use it, Doorman-style.

A sidecar admits against its lease as if the lease were the whole limit (the sidecar's windows.py: the window's amount
becomes `Lease.granted`), and counts everything it admitted in the lease's period. A grant is therefore
*cumulative for the period*: "this pod may have spent up to `granted` by the period's end". Raising it
hands out more; lowering it takes back what the pod has not yet used.

The guarantee: what every pod can still spend under what it holds, plus what has been spent, never
exceeds the limit. Per window (budget, limit, key, period) the allocator computes

    consumed_i  = max(settled_i from usage pulls, used_i + reserved_i the sidecar reports, last seen)
    exposure_i  = max(grant_i, any larger grant issued to it it has not confirmed replacing, held_i it reports,
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
       limit was lowered below what is promised, every pod is (the cut counts as still held until the pod
       reports the smaller grant: a push may fail, and a sidecar keeps spending an expired grant, so an
       operator outage stops no call that a grant covers).
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
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from tokenbudget_api.windows import as_utc
from tokenbudget_operator.reconciler.lease_types import (
    ZERO,
    Allocation,
    Grant,
    LeaseConfig,
    LeaseKey,
    PodGrant,
    PodReport,
    WindowInput,
    WindowLeases,
)

# ----- the algorithm ---------------------------------------------------------------------------------------


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
        return max([self.base, self.held, self.consumed, *(amount for amount, _ in self.larger)])


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
        # Earlier, larger grants count until the pod reports holding no more than the current one: a cut
        # push may be lost, and a sidecar keeps spending an expired grant, so expiry frees nothing.
        confirmed = rep is not None and rep.held <= base
        pod = _Pod(uid=p.uid, report=rep, draining=p.draining, base=base, consumed=consumed,
                   larger=[] if confirmed or g is None else list(g.larger), held=rep.held if rep else ZERO,
                   expires_at=g.expires_at if g else None)
        pod.low = base <= 0 or pod.unused < base * config.low_fraction or (rep is not None and rep.low)
        pods.append(pod)
    return pods, departed


def _spent_by_gone(pods: Sequence[_Pod], departed: _Departed, window: WindowInput) -> Decimal:
    """What pods no longer in the window spent in it (settled, or their last report)."""
    active = {p.uid for p in pods}
    gone = (set(window.settled) | set(departed.spent)) - active
    return sum((max(window.settled.get(uid, ZERO), departed.spent.get(uid, ZERO)) for uid in gone), ZERO)


def _committed(pods: Sequence[_Pod], departed: _Departed, window: WindowInput, now: dt.datetime) -> Decimal:
    return _spent_by_gone(pods, departed, window) + sum((p.exposure(now) for p in pods), ZERO)


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
    consumed = _spent_by_gone(pods, departed, window) + sum((p.consumed for p in pods), ZERO)
    grants = tuple(Grant(p.uid, window.key, p.base, expires, p.consumed, consumed) for p in pods)
    state = WindowLeases(
        key=window.key,
        pods={p.uid: PodGrant(granted=p.base, expires_at=expires, consumed=p.consumed,
                              larger=tuple((a, e) for a, e in p.larger if a > p.base))
              for p in pods},
        departed=departed.spent,
        departed_at=departed.at,
    )
    return Allocation(key=window.key, grants=grants, state=state,
                      committed=_committed(pods, departed, window, now), consumed=consumed, limit=window.limit,
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


__all__ = ["LeaseAllocator", "allocate", "assess"]
