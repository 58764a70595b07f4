"""Status loop: each TokenBudget's usage, pods and conditions onto its status, and an Event per stage change.

Every 0.5 s, per budget, at most once every `status_min_interval_s` and only when something changed
(`StatusWriter`), a merge patch of the status subresource (conditions written whole), and a Kubernetes
Event when the aggregated ladder stage changes. Counts use `desired` as the push loop last refreshed it
(≤ 1 s old).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from tokenbudget_api import names
from tokenbudget_api.tokenbudget import Enforcement, Stage
from tokenbudget_operator.reconciler import insight_signals
from tokenbudget_operator.reconciler.conditions import Problem, Reason, budget_conditions
from tokenbudget_operator.reconciler.fleet import Fleet, every
from tokenbudget_operator.reconciler.indexes import BudgetEntry
from tokenbudget_operator.reconciler.spec_checks import spec_problems
from tokenbudget_operator.reconciler.status_writer import Written, post_event

logger = logging.getLogger(__name__)
STATUS_FIELDS = ("observedGeneration", "conditions", "stage", "usedPercent", "tightestWindow", "windows",
                 "topConsumers", "dryRun", "pods", "notifications")
WITHOUT_SIDECAR_NAMED = 10  # pod names in status.pods.withoutSidecarPods
WARNING_STAGES = frozenset({Stage.THROTTLE.value, Stage.DOWNGRADE.value, Stage.BLOCK.value})


def budget_status(fleet: Fleet, entry: BudgetEntry, now: dt.datetime) -> dict[str, Any]:
    """The whole status to write for one budget now (usage, pods, conditions, notification records)."""
    view = entry.view
    agents = fleet.selected(view.key)
    problems: list[Problem] = []
    for agent in agents:
        assert agent.desired is not None
        problems.extend(p for p in agent.desired.problems if p.source == view.key and p not in problems)
    problems.extend(spec_problems(view))
    problems.extend(fleet.key_problems.get(view.key, ()))
    usage = fleet.aggregator.status(view, now)
    slot = fleet.budget_status.slot(view.key, entry.conditions, entry.stage)
    selected, synced = len(agents), sum(1 for a in agents if a.synced)
    bare = fleet.without_sidecar(view)
    fleet.notifier.observe(view.key, usage)
    notifications = fleet.notifier.status_of(entry, now)
    conditions = budget_conditions(slot.conditions, generation=view.generation, now=now, usage=usage,
                                   selected=selected, synced=synced, problems=problems,
                                   dry_run=view.spec.enforcement is Enforcement.DRY_RUN, without_sidecar=bare,
                                   notifications=fleet.notifier.condition(view))
    insights = fleet.aggregator.insights.status(view.key, now)
    thresholds = view.spec.insights.thresholds if view.spec.insights is not None else None
    conditions += insight_signals.waste_condition(slot.conditions, insights, thresholds,
                                                  generation=view.generation, now=now)
    insight_signals.export(view.namespace, view.name, insights)
    out: dict[str, Any] = {key: usage.get(key) for key in STATUS_FIELDS}
    # None removes a stale list: a merge patch merges into status.pods rather than replacing it.
    pods = {"selected": selected, "synced": synced, "withoutSidecar": len(bare),
            "withoutSidecarPods": bare[:WITHOUT_SIDECAR_NAMED] or None}
    out.update(conditions=conditions, pods=pods, insights=insights, notifications=notifications)
    return out


async def status_round(fleet: Fleet) -> None:
    now = dt.datetime.now(dt.UTC)
    entries = fleet.budget_entries()
    writer = fleet.budget_status
    for entry in entries:
        status = budget_status(fleet, entry, now)
        if writer.due(entry.view.key, status):
            await announce_stage(fleet, entry, writer.slots[entry.view.key], status)
            await announce_waste(fleet, entry, writer.slots[entry.view.key].conditions, status)
            await writer.write(entry.view.namespace, entry.view.name, status, now)
    writer.retain({e.view.key for e in entries})


async def announce_stage(fleet: Fleet, entry: BudgetEntry, slot: Written, status: Mapping[str, Any]) -> None:
    """A Kubernetes Event on the TokenBudget when the aggregated ladder stage changes."""
    stage = str(status.get("stage") or Stage.NORMAL.value)
    before = slot.stage or Stage.NORMAL.value
    slot.stage = stage
    if stage == before:
        return
    view = entry.view
    where = f"window {status.get('tightestWindow')} at {status.get('usedPercent')}%"
    involved = {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND, "namespace": view.namespace,
                "name": view.name, "uid": view.uid}
    try:
        await asyncio.to_thread(
            post_event, fleet.api, involved, type_="Warning" if stage in WARNING_STAGES else "Normal",
            reason=Reason.STAGE_CHANGED, message=f"ladder stage {before} -> {stage} ({where})",
            now=dt.datetime.now(dt.UTC))
    except Exception as exc:
        logger.warning("could not post the stage Event for %s: %s", view.key, exc)


async def announce_waste(fleet: Fleet, entry: BudgetEntry, before: list[Mapping[str, Any]],
                         status: Mapping[str, Any]) -> None:
    """A Warning Event on the TokenBudget when its Waste condition turns True (insight_signals.py)."""
    waste = insight_signals.turned_true(before, status.get("conditions") or [])
    if waste is None:
        return
    view = entry.view
    involved = {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND, "namespace": view.namespace,
                "name": view.name, "uid": view.uid}
    try:
        await asyncio.to_thread(post_event, fleet.api, involved, type_="Warning", reason=str(waste["reason"]),
                                message=str(waste["message"]), now=dt.datetime.now(dt.UTC))
    except Exception as exc:
        logger.warning("could not post the Waste Event for %s: %s", view.key, exc)


async def run(fleet: Fleet) -> None:
    await every(fleet, 0.5, status_round, "status")
