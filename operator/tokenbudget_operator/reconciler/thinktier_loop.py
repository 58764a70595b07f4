"""ThinkTier loop: every `usage_interval_s`, GET /thinking from every sidecar a ThinkTier selects, merged per
class across pods (thinktier_status.py), and per ThinkTier a status merge patch under the same rate limit
as budgets' (`StatusWriter`). Never spec: with `autoApply: Enabled` each class's next applied budget
(thinktier_apply.py) goes into the pods' effective policy, and the push loop is woken when one changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from tokenbudget_operator.reconciler.conditions import Problem
from tokenbudget_operator.reconciler.fleet import Fleet, PodAgent, every
from tokenbudget_operator.reconciler.thinktier_apply import from_status
from tokenbudget_operator.reconciler.thinktier_status import thinktier_status

logger = logging.getLogger(__name__)


async def pull_thinking(fleet: Fleet, agent: PodAgent) -> None:
    base = fleet.base(agent)
    if base is None:
        return
    pod = agent.entry.view
    try:
        snapshot = await fleet.client.get_thinking(base, await fleet.token(pod.namespace))
    except Exception as exc:  # its last figures stay (module docstring of thinktier_status)
        logger.warning("GET /thinking from pod %s failed: %s", pod.key, exc)
        return
    fleet.tier_tracker.observe(pod.uid, snapshot)


async def thinktier_round(fleet: Fleet) -> None:
    """Pull every selected sidecar's figures, then write each ThinkTier's status that changed."""
    selected = {uid: a.desired.tiers for uid, a in fleet.agents.items()
                if not a.departed and a.desired is not None and a.desired.tiers}
    await asyncio.gather(*(pull_thinking(fleet, fleet.agents[uid]) for uid in selected))
    fleet.tier_tracker.retain(selected)
    now = dt.datetime.now(dt.UTC)
    entries = fleet.tier_entries()
    writer = fleet.tier_status
    for entry in entries:
        view = entry.view
        slot = writer.slot(view.key, entry.conditions)
        agents = fleet.selected(view.key, tiers=True)
        problems: list[Problem] = []
        for a in agents:
            assert a.desired is not None
            problems.extend(p for p in a.desired.problems if p.source == view.key and p not in problems)
        fleet.autoapply.seed(view.key, entry.applied)
        status = thinktier_status(
            view, fleet.tier_tracker.tracks(view.key, (a.entry.view.uid for a in agents)),
            previous=slot.conditions, selected=len(agents), synced=sum(1 for a in agents if a.synced),
            problems=problems, now=now, applied=fleet.autoapply.tiers.get(view.key))
        if fleet.autoapply.update(view.key, view.spec.calibration.auto_apply, from_status(status)):
            fleet.wake.set()  # the pods' effective policies changed: push them now
        if writer.due(view.key, status):
            await writer.write(view.namespace, view.name, status, now)
    writer.retain({e.view.key for e in entries})
    fleet.autoapply.retain({e.view.key for e in entries})


async def run(fleet: Fleet) -> None:
    await every(fleet, fleet.settings.usage_interval_s, thinktier_round, "ThinkTier status")
