"""The notification dedupe record of each budget's targets, and what a target is owed now (notify_loop.py
sends it). Pure: no Kubernetes, no HTTP; the clock is an argument.

The record of a target is `TargetState`, persisted as `status.notifications[]` by the status loop; a target
without one starts at stage Normal and owes summaries only of periods that end from then on.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tokenbudget_api.common import ConditionStatus
from tokenbudget_api.notifications import NotificationEvent, NotificationPayload, NotificationStatus, NotificationTarget
from tokenbudget_api.tokenbudget import Limit, Stage
from tokenbudget_api.windows import period_bounds
from tokenbudget_operator.reconciler import notify_messages
from tokenbudget_operator.reconciler.conditions import ConditionType, DesiredCondition, Reason, k8s_time
from tokenbudget_operator.reconciler.indexes import BudgetEntry
from tokenbudget_operator.reconciler.usage_sums import Totals
from tokenbudget_operator.reconciler.views import BudgetView

logger = logging.getLogger(__name__)
PeriodTotals = Callable[[BudgetView, str, dt.datetime], "tuple[Limit, Totals, Totals, str | None] | None"]


@dataclass
class TargetState:
    """One target's dedupe record (persisted as NotificationStatus) and, in memory only, its trouble."""

    stage: str | None = None
    sequence: int = 0
    periods: dict[str, dt.datetime] = field(default_factory=dict)
    last_delivered: dt.datetime | None = None
    failing_since: dt.datetime | None = None
    problem: tuple[str, str] | None = None  # (reason, message) while failing
    next_try: float = 0.0  # monotonic: not before this after a failure

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> TargetState:
        found = NotificationStatus.model_validate(raw)
        return cls(stage=found.stage, sequence=found.sequence,
                   periods={p.window: p.period_start for p in found.periods or []},
                   last_delivered=found.last_delivered, failing_since=found.failing_since)

    def wire(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "sequence": self.sequence}
        if self.stage is not None:
            out["stage"] = self.stage
        if self.periods:
            out["periods"] = [{"window": w, "periodStart": k8s_time(s)} for w, s in sorted(self.periods.items())]
        if self.last_delivered is not None:
            out["lastDelivered"] = k8s_time(self.last_delivered)
        if self.failing_since is not None:
            out["failingSince"] = k8s_time(self.failing_since)
        return out


@dataclass(frozen=True)
class Observed:
    """The stage as the last status round computed it."""

    stage: str
    window: str | None
    used_percent: int | None


@dataclass(frozen=True)
class Pending:
    payload: NotificationPayload | None  # None: nothing to send (a period no longer kept), only the record moves
    after: TargetState  # the record once this message is delivered


class Notifier:
    """Per budget ("namespace/name") and target name: the dedupe record, seeded once from the budget's status."""

    def __init__(self) -> None:
        self.targets: dict[str, dict[str, TargetState]] = {}
        self.observed: dict[str, Observed] = {}
        self.uids: dict[str, str] = {}  # the uid each record belongs to
        self.secrets: dict[str, tuple[dict[str, str] | Exception | None, float]] = {}

    def clear(self) -> None:
        """On taking leadership: re-seed everything from the budgets' stored status."""
        self.targets.clear()
        self.observed.clear()
        self.uids.clear()

    def states(self, entry: BudgetEntry, now: dt.datetime) -> dict[str, TargetState]:
        """The records of `entry`'s targets; a target without one starts at Normal, summaries from `now` on."""
        view = entry.view
        known = self.targets.get(view.key)
        if self.uids.get(view.key) != view.uid:  # new, or deleted and re-created under the same name
            known, self.uids[view.key] = None, view.uid
        if known is None:
            known = {}
            for raw in entry.notifications:
                try:
                    known[str(raw["name"])] = TargetState.from_status(raw)
                except (KeyError, ValueError) as exc:
                    logger.warning("status.notifications of %s not understood, started afresh: %s", view.key, exc)
            self.targets[view.key] = known
        targets = view.spec.notifications or []
        for gone in set(known) - {t.name for t in targets}:
            del known[gone]
        for target in targets:
            state = known.setdefault(target.name, TargetState())
            for lim in view.spec.limits or []:
                if lim.period is not None and lim.name not in state.periods:  # the period before the current one
                    current = period_bounds(lim.period, view.spec.time_zone, now)[0]
                    state.periods[lim.name] = period_bounds(lim.period, view.spec.time_zone,
                                                            current - dt.timedelta(microseconds=1))[0]
        return known

    def observe(self, key: str, status: Mapping[str, Any]) -> None:
        self.observed[key] = Observed(str(status.get("stage") or Stage.NORMAL.value), status.get("tightestWindow"),
                                      status.get("usedPercent"))

    def retain(self, keys: set[str]) -> None:
        for table in (self.targets, self.observed, self.uids):
            for key in set(table) - keys:
                del table[key]

    def status_of(self, entry: BudgetEntry, now: dt.datetime) -> list[dict[str, Any]] | None:
        """status.notifications: seeded here too, so the first status write carries the stored record on."""
        view = entry.view
        if not view.spec.notifications:
            return None
        known = self.states(entry, now)
        return [known[t.name].wire(t.name) for t in view.spec.notifications]

    def condition(self, view: BudgetView) -> DesiredCondition | None:
        """Notifications: None without targets; False with the first trouble, True (Delivering) otherwise."""
        targets = view.spec.notifications or []
        if not targets:
            return None
        known = self.targets.get(view.key, {})
        troubled = [(t.name, known[t.name].problem) for t in targets if t.name in known and known[t.name].problem]
        if not troubled:
            return DesiredCondition(ConditionType.NOTIFICATIONS, ConditionStatus.TRUE, Reason.DELIVERING,
                                    f"{len(targets)} target(s): " + ", ".join(t.name for t in targets))
        reason = troubled[0][1][0] if troubled[0][1] else Reason.NOTIFICATION_FAILED
        message = "; ".join(f"{name}: {problem[1]}" for name, problem in troubled if problem)
        return DesiredCondition(ConditionType.NOTIFICATIONS, ConditionStatus.FALSE, reason, message)


def pending(view: BudgetView, target: NotificationTarget, state: TargetState, observed: Observed | None,
            summaries: PeriodTotals, now: dt.datetime, delay: dt.timedelta) -> list[Pending]:
    """The messages `target` is owed now, in order, each with the record it leaves once delivered.

    `summaries(view, window, period_start)` is `Aggregator.period_totals`. Pure apart from that lookup.
    """
    out: list[Pending] = []
    after = state
    if target.wants(NotificationEvent.STAGE_CHANGED) and observed is not None:
        previous = state.stage or Stage.NORMAL.value
        if observed.stage != previous:
            payload = notify_messages.stage_payload(
                view, target.name, sequence=state.sequence + 1, previous=previous, current=observed.stage,
                window=observed.window, used_percent=observed.used_percent, now=now)
            after = replace(after, stage=observed.stage, sequence=state.sequence + 1)
            out.append(Pending(payload, after))
    for lim in view.spec.limits or []:
        if lim.period is None or not target.wants(NotificationEvent.PERIOD_ENDED):
            continue
        current = period_bounds(lim.period, view.spec.time_zone, now)[0]
        ended = period_bounds(lim.period, view.spec.time_zone, current - dt.timedelta(microseconds=1))[0]
        done = state.periods.get(lim.name)
        if done is None or done >= ended or now - current < delay:
            continue
        found = summaries(view, lim.name, ended)
        after = replace(after, periods={**after.periods, lim.name: ended})
        if found is None:  # the period is no longer kept (an outage): nothing true to say, move on
            out.append(Pending(None, after))
            continue
        limit, total, fullest, key = found
        payload = notify_messages.summary_payload(view, target.name, limit=limit, start=ended, end=current,
                                                  total=total, fullest=fullest, key=key, now=now)
        out.append(Pending(payload, after))
    return out


__all__ = ["Notifier", "Observed", "Pending", "PeriodTotals", "TargetState", "pending"]
