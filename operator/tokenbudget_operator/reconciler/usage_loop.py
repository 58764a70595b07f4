"""Usage loop: every `usage_interval_s`, pull each sidecar's new usage records, commit, then acknowledge.

GET /usage after the persisted cursor from every sidecar, `Aggregator.add`, ONE ConfigMap write (cursors +
sums, resourceVersion-guarded), then POST /usage/ack (aggregate.py explains why this order never loses or
double counts a record across a crash). A departed pod is pulled once more, then forgotten. A pull that
shows the sidecar running another policy than it last acknowledged (it restarted) triggers a re-push.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from tokenbudget_api.usage import UsageRecord
from tokenbudget_operator.reconciler import metrics
from tokenbudget_operator.reconciler.fleet import Fleet, PodAgent, every
from tokenbudget_operator.reconciler.sidecar_client import SidecarError
from tokenbudget_operator.reconciler.status_writer import StateConflict

logger = logging.getLogger(__name__)


async def pull(fleet: Fleet, agent: PodAgent) -> tuple[PodAgent, int] | None:
    base = fleet.base(agent)
    if base is None:
        return None
    pod = agent.entry.view
    try:
        token = await fleet.token(pod.namespace)
        page = await fleet.client.get_usage(base, token, fleet.aggregator.cursor(pod.uid))
    except Exception as exc:
        metrics.PULLS.labels(result="error").inc()
        logger.warning("usage pull from pod %s failed: %s", pod.key, exc)
        return None
    metrics.PULLS.labels(result="ok").inc()
    if (page.policy_version is not None and agent.applied is not None and not agent.pushing
            and page.policy_version != agent.applied):
        # The sidecar restarted (its policy is not on disk) or was replaced at the same address.
        logger.info("pod %s runs policy %s, not %s: pushing again", pod.key, page.policy_version, agent.applied)
        agent.applied = None
        fleet.wake.set()
    records = attribute_unpushed(page.records, agent.desired.budgets if agent.desired is not None else ())
    added = fleet.aggregator.add(pod.uid, records, pod_name=pod.name, last_seq=page.last_seq,
                                 per_user=fleet.per_user)
    return agent, added


def attribute_unpushed(records: list[UsageRecord], selecting: Sequence[str]) -> list[UsageRecord]:
    """Calls a sidecar served before our first push reached it name no budget (`awaiting_policy`): they
    count against the budgets that select the pod now, so the gap at a pod's start is never uncounted."""
    return [r.model_copy(update={"budgets": list(selecting)}) if r.awaiting_policy and not r.budgets else r
            for r in records]


async def usage_round(fleet: Fleet) -> int:
    """One pull from every sidecar, one commit, then the acks; returns how many records were new."""
    async with fleet.commit:
        agents = list(fleet.agents.values())
        results = [r for r in await asyncio.gather(*(pull(fleet, a) for a in agents)) if r is not None]
        added = sum(n for _, n in results)
        pending_acks = [a for a, _ in results if fleet.aggregator.cursor(a.entry.view.uid) > a.acked]
        if added or pending_acks:
            forget_deleted_budgets(fleet)
            try:
                await asyncio.to_thread(fleet.store.save, fleet.aggregator.state())
            except StateConflict as exc:
                logger.warning("usage state changed under us (%s): reloading, nothing acknowledged", exc)
                await fleet.restore()
                return 0
            metrics.STATE_WRITES.inc()
            fleet.committed()
        for agent in pending_acks:
            pod = agent.entry.view
            cursor = fleet.aggregator.cursor(pod.uid)
            base = fleet.base(agent)
            if base is None:
                continue
            try:
                await fleet.client.ack_usage(base, await fleet.token(pod.namespace), cursor)
                agent.acked = cursor
            except SidecarError as exc:
                logger.warning("ack to pod %s failed (retried next round): %s", pod.key, exc)
        for uid in [uid for uid, a in fleet.agents.items() if a.departed]:
            fleet.aggregator.forget_pod(uid)
            del fleet.agents[uid]
        return added


def forget_deleted_budgets(fleet: Fleet) -> None:
    if not fleet.indexes_ready:
        return
    known = {e.view.key for e in fleet.budget_entries()}
    state = fleet.aggregator.state()
    for budget in set(state["budgets"]) | set(state["pending"]):
        if budget not in known:
            fleet.aggregator.forget_budget(budget)


async def run(fleet: Fleet) -> None:
    await every(fleet, fleet.settings.usage_interval_s, usage_round, "usage")
