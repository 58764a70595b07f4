"""kopf handlers that put TokenBudgets and ThinkTiers onto sidecars and write usage back onto the budgets.

Shape: four `@kopf.index`es (indexes.py: budgets, tiers, pods with a sidecar, pods without) hold the cluster in memory;
watch events only wake one `Fleet` (fleet.py; started at startup, stopped at cleanup), whose seven loops
work from the indexes, each in a module of its own:

- push_loop: every pod's effective policy onto its sidecar when its version changes;
- usage_loop: usage records pulled, committed to one ConfigMap, then acknowledged;
- lease_loop: shared windows split into per-pod grants (leases.py, lease_rules.py);
- status_loop: each TokenBudget's status, rate-limited, and an Event per stage change;
- thinktier_loop: each ThinkTier's per-class figures merged across pods onto its status;
- key_secrets: each upstream's key Secret looked for, a missing one said on its budget;
- notify_loop: stage changes and end-of-period summaries to the webhooks a budget names.

Only one replica acts: the holder of a coordination.k8s.io Lease (leader_election.py); the others keep
their indexes warm and take over with the same recovery path as a restart.

Why events only wake a loop instead of handling the object: a pod's policy depends on every budget and tier
of its namespace, so "what changed" is best recomputed from the indexes; and kopf's on.event handlers write
nothing onto the objects (no finalizer, no progress annotation), so users' metadata stays theirs.
kopf runs non-index handlers only once every index is filled, so the first event also means "the indexes
are complete": before it nothing is pushed, or a half-listed index would strip budgets from pods.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from prometheus_client import REGISTRY

from tokenbudget_api import names
from tokenbudget_operator import kube
from tokenbudget_operator.reconciler import (
    key_secrets,
    lease_loop,
    notify_loop,
    push_loop,
    status_loop,
    thinktier_loop,
    usage_loop,
)
from tokenbudget_operator.reconciler.fleet import Fleet
from tokenbudget_operator.reconciler.indexes import BarePodIndex, BudgetIndex, PodIndex, TierIndex, has_sidecar
from tokenbudget_operator.reconciler.spend import SpendCollector
from tokenbudget_operator.runtime import runtime

MEMO_FLEET = "tokenbudget_fleet"
LOOPS = (push_loop.run, usage_loop.run, status_loop.run, lease_loop.run, thinktier_loop.run, key_secrets.run,
         notify_loop.run)
SPEND = SpendCollector(lambda: None)  # the spend counters on /metrics (ops.py), once the fleet has started
REGISTRY.register(SPEND)


def _wake(memo: Any) -> None:
    found = memo.get(MEMO_FLEET)
    if isinstance(found, Fleet):
        found.indexes_ready = True
        found.wake.set()


@kopf.on.event(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL, id="tokenbudget-budget-events")
async def on_budget_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.event(names.GROUP, names.VERSION, names.THINKTIER_PLURAL, id="tokenbudget-tier-events")
async def on_tier_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.event("pods", id="tokenbudget-pod-events", when=has_sidecar)
async def on_pod_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.startup(id="tokenbudget-reconciler")  # type: ignore[arg-type]
async def start_reconciler(
    memo: Any,
    tokenbudget_budgets: BudgetIndex,
    tokenbudget_tiers: TierIndex,
    tokenbudget_sidecar_pods: PodIndex,
    tokenbudget_bare_pods: BarePodIndex,
    **_: Any,
) -> None:
    """Restore the committed usage state, then run the loops until cleanup."""
    state = runtime(memo)
    state.readiness["reconciler"] = False
    api = await asyncio.to_thread(kube.api_client)
    fleet = Fleet(state.settings, api, tokenbudget_budgets, tokenbudget_tiers, tokenbudget_sidecar_pods,
                  tokenbudget_bare_pods)
    await fleet.restore()
    memo[MEMO_FLEET] = fleet
    SPEND.source = fleet.exported_spend
    await fleet.run(LOOPS)
    state.cleanups.append(fleet.stop)
    state.readiness["reconciler"] = True


__all__ = ["LOOPS", "start_reconciler"]
