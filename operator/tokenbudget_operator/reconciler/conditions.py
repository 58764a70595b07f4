"""Status conditions, built whole: the list the operator writes is always complete and keyed by type.

Kubernetes clients read conditions as a map keyed by `type` (metav1.Condition), and a merge patch of
`status.conditions` replaces the list, so every write carries every condition: a partial list would
delete the others. `lastTransitionTime` must say when `status` last *changed*, not when we last wrote,
or `kubectl wait` and alerting on "condition true for 10 minutes" break; it is therefore carried over
from the previous list whenever the status is unchanged, while reason, message and observedGeneration
are refreshed. Pure functions of (previous conditions, observations, now): no kopf, no client.

TokenBudget conditions:

    Ready        True when the budget is well formed, selects pods and every selected sidecar enforces
                 the current generation; otherwise False with the first reason that explains why
                 (a misconfiguration Problem, NoPodsSelected, or SyncInProgress).
    Synced       True when selected == synced > 0 (reason AllPodsSynced); False with NoPodsSelected or
                 SyncInProgress, the counts in the message ("3/4 selected pods enforce generation 7").
    LadderStage  True while a ladder step is in force; reason is the stage (Alert, Throttle, Downgrade,
                 Block) or Normal with status False.
    Exhausted    True when the fullest window reached 100% (reason WindowExhausted), else WithinLimits.
    SidecarMissing  True when pods the selector matches run without the sidecar, unmetered (reason
                 PodsWithoutSidecar, the count and the first names in the message); else AllPodsHaveSidecar.
    Notifications   only with spec.notifications: True (Delivering) while every target can be reached; False
                 with NotificationSecretMissing (the Secret or a key is missing) or NotificationFailed
                 (retries exhausted), the targets named in the message (notify_loop.py).

ThinkTier conditions (built in thinktier_status.py with `synced_condition` and `build_conditions`):

    Ready, Synced          as for a TokenBudget (Ready=True has reason Measuring).
    TruncationHigh         a class with minSamples calls truncates more often than truncationAlertPercent.
    UnderUsed              a class with minSamples calls leaves more than underUseAlertPercent of its budget
                           unused at P50. Both Unknown (NotEnoughSamples) until some class has minSamples.
    AutoApplied            only while calibration.autoApply is Enabled: True (AppliedInCluster) while some
                           class runs an applied budget other than its declared one, else False (AsDeclared);
                           the spec is never written (thinktier_apply.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tokenbudget_api.common import ConditionStatus


class ConditionType(StrEnum):
    READY = "Ready"
    SYNCED = "Synced"
    LADDER_STAGE = "LadderStage"
    EXHAUSTED = "Exhausted"
    TRUNCATION_HIGH = "TruncationHigh"
    UNDER_USED = "UnderUsed"
    AUTO_APPLIED = "AutoApplied"
    SIDECAR_MISSING = "SidecarMissing"
    NOTIFICATIONS = "Notifications"


class Reason(StrEnum):
    """Every CamelCase reason the reconciler writes, in conditions and Events: one list to read and grep."""

    ENFORCING = "Enforcing"
    DRY_RUN = "DryRun"
    NO_PODS_SELECTED = "NoPodsSelected"
    SYNC_IN_PROGRESS = "SyncInProgress"
    ALL_PODS_SYNCED = "AllPodsSynced"
    WINDOW_EXHAUSTED = "WindowExhausted"
    WITHIN_LIMITS = "WithinLimits"
    NO_USAGE_YET = "NoUsageYet"
    MEASURING = "Measuring"
    NOT_ENOUGH_SAMPLES = "NotEnoughSamples"
    TRUNCATION_ABOVE_THRESHOLD = "TruncationAboveThreshold"
    MEDIAN_FAR_BELOW_BUDGET = "MedianFarBelowBudget"
    WITHIN_THRESHOLD = "WithinThreshold"
    APPLIED_IN_CLUSTER = "AppliedInCluster"
    AS_DECLARED = "AsDeclared"
    STAGE_CHANGED = "StageChanged"  # the Event on a ladder stage change
    PODS_WITHOUT_SIDECAR = "PodsWithoutSidecar"
    ALL_PODS_HAVE_SIDECAR = "AllPodsHaveSidecar"
    DELIVERING = "Delivering"
    NOTIFICATION_SECRET_MISSING = "NotificationSecretMissing"
    NOTIFICATION_FAILED = "NotificationFailed"  # also the Event on each failed delivery
    # Problems (Ready=False): misconfiguration found while resolving policy or checking a spec.
    UPSTREAM_CONFLICT = "UpstreamConflict"
    PRICE_CONFLICT = "PriceConflict"
    UNKNOWN_AUTHORIZED_TIER = "UnknownAuthorizedTier"
    OVERLAPPING_THINK_TIERS = "OverlappingThinkTiers"
    MODEL_WITHOUT_PRICE = "ModelWithoutPrice"
    UNKNOWN_MODEL = "UnknownModel"
    TIER_ABOVE_PROVIDER_MAX = "TierAboveProviderMax"
    TIER_ABOVE_OUTPUT_CAP = "TierAboveOutputCap"
    KEY_SECRET_MISSING = "KeySecretMissing"  # an upstream's apiKeySecretRef names a Secret or key that is not there


@dataclass(frozen=True)
class Problem:
    """A misconfiguration found while resolving policy: surfaces as Ready=False with this reason.

    `source` names the object at fault ("namespace/name"), so the kopf layer can attach the problem to
    the right TokenBudget, ThinkTier or Pod (and emit an Event there).
    """

    reason: str
    message: str
    source: str | None = None


@dataclass(frozen=True)
class DesiredCondition:
    """What a condition should say now; `build_conditions` adds the timestamps."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def k8s_time(at: dt.datetime) -> str:
    """RFC 3339 in UTC at whole seconds, the form the apiserver stores for metav1.Time."""
    if at.tzinfo is None:
        raise ValueError("pass an aware datetime")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    desired: Sequence[DesiredCondition],
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The whole conditions list: `desired` in order, with `lastTransitionTime` kept where status is unchanged.

    Types present in `previous` but not in `desired` are dropped: this module owns the list.
    """
    before = {str(c.get("type")): c for c in previous or [] if isinstance(c, Mapping)}
    stamp = k8s_time(now)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for want in desired:
        if want.type in seen:
            raise ValueError(f"condition type {want.type!r} given twice")
        seen.add(want.type)
        old = before.get(want.type)
        unchanged = old is not None and old.get("status") == want.status.value and old.get("lastTransitionTime")
        condition: dict[str, Any] = {
            "type": want.type,
            "status": want.status.value,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": str(old["lastTransitionTime"]) if unchanged and old is not None else stamp,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        out.append(condition)
    return out


def _true(flag: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if flag else ConditionStatus.FALSE


def synced_counts(selected: int, synced: int, generation: int | None) -> str:
    gen = f"generation {generation}" if generation is not None else "the current generation"
    return f"{synced}/{selected} selected pods enforce {gen}"


def synced_condition(selected: int, synced: int, generation: int | None) -> DesiredCondition:
    """Synced: True when selected == synced > 0; NoPodsSelected or SyncInProgress (counts in the message)."""
    counts = synced_counts(selected, synced, generation)
    if selected == 0:
        return DesiredCondition(ConditionType.SYNCED, ConditionStatus.FALSE, Reason.NO_PODS_SELECTED,
                                "the selector matches no pod with a sidecar in this namespace")
    if synced >= selected:
        return DesiredCondition(ConditionType.SYNCED, ConditionStatus.TRUE, Reason.ALL_PODS_SYNCED, counts)
    return DesiredCondition(ConditionType.SYNCED, ConditionStatus.FALSE, Reason.SYNC_IN_PROGRESS, counts)


def budget_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    *,
    generation: int | None,
    now: dt.datetime,
    usage: Mapping[str, Any],
    selected: int,
    synced: int,
    problems: Sequence[Problem] = (),
    dry_run: bool = False,
    without_sidecar: Sequence[str] = (),
    notifications: DesiredCondition | None = None,
) -> list[dict[str, Any]]:
    """Ready, Synced, LadderStage, Exhausted, SidecarMissing (and Notifications) for one TokenBudget.

    `usage` is `Aggregator.status()` (camelCase keys: stage, usedPercent, tightestWindow, windows);
    `selected`/`synced` count pods with a sidecar that the selector matches and that applied the policy
    of this generation; `problems` are misconfigurations attributed to this budget; `without_sidecar` names
    the selected pods that run without the sidecar; `notifications` is notify_loop's condition, if any.
    """
    synced_c = synced_condition(selected, synced, generation)
    counts = synced_counts(selected, synced, generation)

    if problems:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.FALSE, problems[0].reason,
                                 "; ".join(p.message for p in problems))
    elif synced_c.status is not ConditionStatus.TRUE:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.FALSE, synced_c.reason, synced_c.message)
    else:
        ready = DesiredCondition(ConditionType.READY, ConditionStatus.TRUE,
                                 Reason.DRY_RUN if dry_run else Reason.ENFORCING,
                                 ("recording what enforcement would do; " if dry_run else "") + counts)

    stage = str(usage.get("stage") or "Normal")
    percent = usage.get("usedPercent")
    window = usage.get("tightestWindow")
    where = f"window {window} at {percent}%" if window is not None and percent is not None else "no usage yet"
    ladder = DesiredCondition(ConditionType.LADDER_STAGE, _true(stage != "Normal"), stage, where)

    exhausted_window = _exhausted_window(usage)
    if exhausted_window is not None:
        name, resets = exhausted_window
        exhausted = DesiredCondition(ConditionType.EXHAUSTED, ConditionStatus.TRUE, Reason.WINDOW_EXHAUSTED,
                                     f"window {name} is used up" + (f" until {resets}" if resets else ""))
    else:
        exhausted = DesiredCondition(ConditionType.EXHAUSTED, ConditionStatus.FALSE,
                                     Reason.WITHIN_LIMITS if window is not None else Reason.NO_USAGE_YET, where)
    desired = [ready, synced_c, ladder, exhausted, sidecar_missing_condition(without_sidecar)]
    if notifications is not None:
        desired.append(notifications)
    return build_conditions(previous, desired, generation=generation, now=now)


SIDECAR_MISSING_NAMED = 5  # pod names in the SidecarMissing message


def sidecar_missing_condition(pods: Sequence[str]) -> DesiredCondition:
    """SidecarMissing: True while selected pods bypass the sidecar, naming how many and the first few."""
    if not pods:
        return DesiredCondition(ConditionType.SIDECAR_MISSING, ConditionStatus.FALSE, Reason.ALL_PODS_HAVE_SIDECAR,
                                "every selected pod runs the sidecar")
    shown = ", ".join(sorted(pods)[:SIDECAR_MISSING_NAMED])
    more = f" and {len(pods) - SIDECAR_MISSING_NAMED} more" if len(pods) > SIDECAR_MISSING_NAMED else ""
    return DesiredCondition(
        ConditionType.SIDECAR_MISSING, ConditionStatus.TRUE, Reason.PODS_WITHOUT_SIDECAR,
        f"{len(pods)} selected pod(s) run without the sidecar, unmetered: {shown}{more} (created before the "
        "namespace opted in, admitted while the webhook was down, or opted out: recreate them)")


def _exhausted_window(usage: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(label, resetsAt) of the first window at 100%, if any."""
    for w in usage.get("windows") or []:
        if isinstance(w, Mapping) and int(w.get("percent", 0)) >= 100:
            label = f"{w['name']}[{w['key']}]" if w.get("key") else str(w["name"])
            resets = w.get("resetsAt")
            return label, str(resets) if resets else None
    return None


__all__ = [
    "ConditionType",
    "DesiredCondition",
    "Problem",
    "Reason",
    "budget_conditions",
    "build_conditions",
    "k8s_time",
    "sidecar_missing_condition",
    "synced_condition",
    "synced_counts",
]
