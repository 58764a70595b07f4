"""What the operator does with the allocator's grants: which windows are leased, what each pod is pushed,
when a renewed grant is worth a push, and what a pod already holds. Pure functions; the lease round
(lease_loop.py) and the policy refresh (fleet.py) call them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

from tokenbudget_api.policy import KeyUse, Lease, SidecarPolicy
from tokenbudget_api.tokenbudget import LadderStep, Limit
from tokenbudget_api.windows import as_utc, percent_used
from tokenbudget_operator.reconciler.lease_types import lease_period_start
from tokenbudget_operator.reconciler.views import BudgetView


def leased_windows(view: BudgetView) -> list[Limit]:
    """The windows split into leases: every window, of an enforcing budget and of a DryRun one alike (a dry
    run applies its grants to what it would have done, so its counts speak for the whole fleet, not one pod).
    Rolling and per-key windows get their own kind of lease (leases.py)."""
    return list(view.spec.limits or [])


def applied_leases(policy: SidecarPolicy) -> dict[tuple[str, str], list[Lease]]:
    """(budget key, window) → the whole-window leases a policy grants (this period's, maybe the next's)."""
    out: dict[tuple[str, str], list[Lease]] = {}
    for b in policy.budgets:
        for lease in b.leases or []:
            if lease.key is None:
                out.setdefault((b.key, lease.window), []).append(lease)
    return out


def leases_for(granted: Mapping[str, Sequence[Lease]], budgets: Sequence[BudgetView],
               now: dt.datetime) -> dict[str, list[Lease]]:
    """The grants to push to one pod (`granted`: its grants by budget key); a leased window not yet
    allocated gets a zero grant.

    Zero, not "no lease": without a lease the sidecar enforces the whole limit locally, so N new pods
    could each spend it all before the first lease round. A zero grant refuses calls for at most one
    lease round (it expires at the period's end, so its version is stable until then).
    """
    out: dict[str, list[Lease]] = {}
    for view in budgets:
        windows = leased_windows(view)
        if not windows:
            continue
        have = granted.get(view.key, [])
        for lim in windows:
            start = lease_period_start(lim, view.spec.time_zone, now)
            # This period's grant and the next one's, if allocated; never one for a period that ended.
            mine = [x for x in have if x.window == lim.name
                    and (start is None or (x.period_start is not None and x.period_start >= start))]
            if not any(x.period_start == start for x in mine):
                # Expires long after this period (rolling: today, UTC) ends, so its version holds still.
                anchor = start or now.replace(hour=0, minute=0, second=0, microsecond=0)
                mine.append(Lease(window=lim.name, granted=Decimal(0), period_start=start,
                                  expires_at=anchor + dt.timedelta(days=32)))
            out.setdefault(view.key, []).extend(sorted(mine, key=lambda x: x.period_start or now))
    return out


MAX_KEYS_PER_LEASE = 200


def key_figures(usage: Mapping[str, Mapping[str, Decimal]], limit: Decimal, ladder: Sequence[LadderStep],
                pod_uid: str) -> dict[str, KeyUse] | None:
    """The fleet figures one pod is told of a per-key window: keys at or above half the ladder's lowest step,
    fullest first, at most MAX_KEYS_PER_LEASE (`usage`: key → pod uid → settled). Below that a key's stage is
    Normal whoever counts it, so the sidecar's own figure is as good; no ladder, no figures."""
    if not ladder:
        return None
    floor = Decimal(min(step.at for step in ladder)) / 200 * limit
    totals = sorted(((sum(by_pod.values(), Decimal(0)), key) for key, by_pod in usage.items()), reverse=True)
    chosen = [(total, key) for total, key in totals[:MAX_KEYS_PER_LEASE] if total >= floor]
    return {key: KeyUse(fleet=total, own=usage[key].get(pod_uid, Decimal(0))) for total, key in chosen} or None


def key_percents(lease: Lease, limit: Decimal) -> dict[str, int]:
    return {k: percent_used(u.fleet - u.own, limit) for k, u in (lease.key_used or {}).items()}


def others_percent(lease: Lease, limit: Decimal) -> int | None:
    """The whole-percent share of `limit` the other pods had consumed when `lease` was granted."""
    if lease.fleet_used is None:
        return None
    return percent_used(lease.fleet_used - (lease.own_used or Decimal(0)), limit)


def stable(pushed: Sequence[Lease], lease: Lease, now: dt.datetime, ttl: dt.timedelta, limit: Decimal) -> Lease:
    """Keep the lease already pushed (`pushed`: the pod's grants of that budget) while only its expiry moved,
    half its lifetime is left, and the other pods' use is the same whole percent of `limit`.

    Every changed lease is a new policy version, hence a push; renewing at half-life instead cuts pushes to
    a trickle, and an earlier expiry than the allocator assumes is on the safe side (the sidecar stops
    admitting sooner, never later). The fleet's use goes out when it moved by a percentage point, so a
    sidecar's percent (and stage) is at most one lease round and one point behind the fleet: at most 100
    pushes per pod and window per period for that.
    """
    old = next((x for x in pushed if (x.window, x.period_start) == (lease.window, lease.period_start)), None)
    if (old is not None and old.granted == lease.granted and as_utc(old.expires_at) - now > ttl / 2
            and others_percent(old, limit) == others_percent(lease, limit)
            and key_percents(old, limit) == key_percents(lease, limit)):
        return old
    return lease


__all__ = ["applied_leases", "key_figures", "key_percents", "leased_windows", "leases_for", "others_percent",
           "stable"]
