"""Lease loop: every `lease_interval_s`, one allocation per shared window; the grants ride the next push.

GET /budgets (`?keys=fullest`) from the sidecars of enforcing budgets, one `LeaseAllocator` round per window
(calendar, rolling and per-key alike, leases.py), this period's and, within three rounds of its end, the
next period's. `settled` comes from the usage pulls, which pull a departed pod once more before forgetting
it (leases.py's contract); a pod not heard from this round keeps what it held, unreported.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from tokenbudget_api.admin import BudgetReport
from tokenbudget_api.policy import Lease
from tokenbudget_api.windows import limit_amount
from tokenbudget_operator.reconciler import metrics
from tokenbudget_operator.reconciler.fleet import Fleet, PodAgent
from tokenbudget_operator.reconciler.lease_rules import applied_leases, key_figures, leased_windows, stable
from tokenbudget_operator.reconciler.lease_types import (
    LeaseKey,
    PodInput,
    PodReport,
    WindowInput,
    lease_periods,
    quantum_for,
)

logger = logging.getLogger(__name__)


async def report(fleet: Fleet, agent: PodAgent) -> tuple[str, dict[str, BudgetReport] | None]:
    """uid → the sidecar's GET /budgets by budget key (None: not heard from this round).

    A sidecar whose applied policy we do not know (we just started) is asked for it first: the leases
    it holds are what learning mode renews, and a window it has not used yet is absent from /budgets.
    """
    base = fleet.base(agent)
    uid = agent.entry.view.uid
    if base is None:
        return uid, None
    try:
        token = await fleet.token(agent.entry.view.namespace)
        if agent.applied is None and not agent.pushing:
            policy = await fleet.client.get_policy(base, token)
            agent.applied, agent.applied_leases = policy.version, applied_leases(policy)
        answer = await fleet.client.get_budgets(base, token, fullest_keys=True)
    except Exception as exc:
        logger.warning("lease report from pod %s failed: %s", agent.entry.view.key, exc)
        return uid, None
    agent.reported = True
    return uid, {b.name: b for b in answer.budgets}


async def lease_round(fleet: Fleet) -> None:
    """Reports from every sidecar of a leased budget, one allocation per window, then the pushes."""
    entries = [e for e in fleet.budget_entries() if leased_windows(e.view)]
    users = [a for a in fleet.agents.values() if not a.departed and a.desired is not None
             and any(e.view.key in a.desired.budgets for e in entries)]
    reports = dict(await asyncio.gather(*(report(fleet, a) for a in users)))
    now = dt.datetime.now(dt.UTC)
    ahead = dt.timedelta(seconds=3 * fleet.settings.lease_interval_s)  # the next period's grants, in time
    fresh: dict[str, dict[str, list[Lease]]] = {}
    allocated: set[LeaseKey] = set()
    for entry in entries:
        view = entry.view
        selected = [a for a in users if a.desired is not None and view.key in a.desired.budgets]
        periods = [(lim, start) for lim in leased_windows(view)
                   for start in lease_periods(lim, view.spec.time_zone, now, ahead)]
        for lim, start in periods:
            key = LeaseKey(view.key, lim.name, None, start)
            allocated.add(key)
            pods = []
            for a in selected:
                uid = a.entry.view.uid
                answer = reports.get(uid)
                if answer is None:
                    pods.append(PodInput(uid, None, a.entry.terminating))
                    continue
                budget = answer.get(view.key)
                # A per-key limit's entries (one per key) all live under the lease every key shares.
                own = [w for w in (budget.windows if budget else [])
                       if w.name == lim.name and (w.key is None) == (lim.per is None)]
                held = a.applied_leases.get((view.key, lim.name), [])
                pods.append(PodInput(uid, PodReport.from_sidecar(key, own, held), a.entry.terminating))
            # Nothing is spent yet in the next period (a call counts in the period it started in).
            upcoming = start is not None and start > now
            settled = {} if upcoming else fleet.aggregator.settled(view, lim.name, None, now)
            rolling = dt.timedelta(seconds=lim.rolling_seconds) if lim.rolling_seconds else None
            alloc = fleet.allocator.allocate(WindowInput(key, limit_amount(lim), pods, settled=settled,
                                                         quantum=quantum_for(lim), rolling=rolling), now)
            per_key = (fleet.aggregator.key_usage(view, lim.name, now)
                       if lim.per is not None and not upcoming and view.spec.ladder else {})
            for grant in alloc.grants:
                pushed = fleet.leases.get(grant.pod_uid, {}).get(view.key, [])
                lease = grant.lease()
                if per_key:
                    figures = key_figures(per_key, limit_amount(lim), view.spec.ladder or [], grant.pod_uid)
                    lease = lease.model_copy(update={"key_used": figures})
                lease = stable(pushed, lease, now, fleet.lease_config.ttl, limit_amount(lim))
                fresh.setdefault(grant.pod_uid, {}).setdefault(view.key, []).append(lease)
    fleet.allocator.retain(allocated)  # deleted budgets, ended periods
    fleet.leases = fresh
    metrics.LEASES_OUTSTANDING.set(float(fleet.allocator.outstanding(now)))
    fleet.wake.set()


async def run(fleet: Fleet) -> None:
    """Every `lease_interval_s`, and at once when a pod waits for its first grants (push_loop)."""
    while True:
        if fleet.active:
            try:
                fleet.refresh()
                await lease_round(fleet)
                fleet.leases_ready = True
            except Exception:
                logger.exception("lease round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.lease_wake.wait(),
                                   fleet.settings.lease_interval_s if fleet.leases_ready else 0.05)
        fleet.lease_wake.clear()
