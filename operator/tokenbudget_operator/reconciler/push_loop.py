"""Push loop: every pod's effective policy onto its sidecar, as soon as it changes.

For every pod with a sidecar, `effective.resolve` (via `Fleet.refresh`) gives the policy; when its version
differs from what the sidecar last said it applied, PUT it: one task per pod at a time, so an older policy
never lands after a newer one; failures back off exponentially per pod, up to 30 s. Event-driven (watch
events set `Fleet.wake`), plus a resync every `resync_interval_s` as a safety net. Nothing is pushed before
the first lease round, which learns what the sidecars already hold (after a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from tokenbudget_operator.reconciler import metrics
from tokenbudget_operator.reconciler.effective import Effective
from tokenbudget_operator.reconciler.fleet import Fleet, PodAgent
from tokenbudget_operator.reconciler.lease_rules import applied_leases, leased_windows
from tokenbudget_operator.reconciler.sidecar_client import SidecarError

logger = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0


def awaits_grants(fleet: Fleet, agent: PodAgent) -> bool:
    """A pod no lease round has seen yet for one of its leased budgets: its first push waits for that round
    (woken at once), so it carries the pod's first grants and a budget with room admits its first calls,
    instead of a zero grant refusing them until the next round."""
    desired = agent.desired
    if desired is None or agent.reported:
        return False
    return any((view := fleet.view(key)) is not None and leased_windows(view) for key in desired.budgets)


def schedule_pushes(fleet: Fleet) -> None:
    now = time.monotonic()
    for agent in fleet.agents.values():
        if agent.departed or agent.pushing or agent.desired is None or agent.entry.ip is None:
            continue
        if agent.applied == agent.desired.policy.version or now < agent.next_try:
            continue
        if awaits_grants(fleet, agent):
            fleet.lease_wake.set()
            continue
        agent.pushing = True
        task = asyncio.create_task(push(fleet, agent, agent.desired))
        fleet.pushes.add(task)
        task.add_done_callback(fleet.pushes.discard)


async def push(fleet: Fleet, agent: PodAgent, desired: Effective) -> None:
    pod = agent.entry.view
    began = time.monotonic()
    try:
        base = fleet.base(agent)
        if base is None:
            return
        token = await fleet.token(pod.namespace)
        try:
            applied = await fleet.client.put_policy(base, token, desired.policy)
        except SidecarError as exc:
            if exc.status == 401:
                fleet.forget_token(pod.namespace)
            raise
        agent.applied = applied
        if applied == desired.policy.version:
            agent.applied_leases = applied_leases(desired.policy)
        agent.failures = 0
        agent.next_try = 0.0
        metrics.PUSHES.labels(result="ok").inc()
        metrics.PUSH_SECONDS.observe(time.monotonic() - began)
        observe_propagation(fleet, agent, desired)
        logger.info("pod %s applied policy %s (%d budgets)", pod.key, applied, len(desired.budgets))
    except Exception as exc:
        agent.failures += 1
        agent.next_try = time.monotonic() + min(MAX_BACKOFF_S, 0.25 * 2 ** min(agent.failures, 8))
        metrics.PUSHES.labels(result="error").inc()
        logger.warning("push to pod %s failed (%d in a row): %s", pod.key, agent.failures, exc)
    finally:
        agent.pushing = False
        fleet.wake.set()


def observe_propagation(fleet: Fleet, agent: PodAgent, desired: Effective) -> None:
    """Seconds from the operator first seeing a budget generation to a sidecar applying it."""
    now = time.time()
    for budget in desired.policy.budgets:
        view = fleet.view(budget.key)
        if view is None or view.generation != budget.generation:
            continue
        key = (agent.entry.view.uid, view.uid, view.generation)
        seen = fleet.seen_generation.get((view.uid, view.generation))
        if seen is not None and key not in fleet.propagated:
            fleet.propagated.add(key)
            metrics.PROPAGATION_SECONDS.observe(now - seen)


async def run(fleet: Fleet) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fleet.wake.wait(), timeout=min(1.0, fleet.settings.resync_interval_s))
        fleet.wake.clear()
        if not fleet.active or not fleet.leases_ready:
            continue
        try:
            fleet.refresh()
            schedule_pushes(fleet)
        except Exception:
            logger.exception("reconcile round failed")
