"""The kopf indexes the reconciler works from: TokenBudgets, ThinkTiers, pods that run the sidecar, and the
names and labels of live pods that do not (a budget selecting one reports it: SidecarMissing).

Each entry is parsed once per watch event (views.py) and carries the few status fields the operator must
carry over (conditions keep their lastTransitionTime, the stage its last announcement, notifications what
each target was sent) across a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import pydantic

from tokenbudget_api import names
from tokenbudget_operator.reconciler.thinktier_apply import Applied, from_status
from tokenbudget_operator.reconciler.views import BudgetView, PodView, TierView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetEntry:
    """A TokenBudget as indexed: the parsed view plus the status fields the operator must carry over."""

    view: BudgetView
    conditions: tuple[Mapping[str, Any], ...] = ()
    stage: str | None = None
    notifications: tuple[Mapping[str, Any], ...] = ()  # status.notifications: the dedupe record


@dataclass(frozen=True)
class TierEntry:
    """A ThinkTier as indexed: the parsed view plus its conditions (lastTransitionTime survives a restart)."""

    view: TierView
    conditions: tuple[Mapping[str, Any], ...] = ()
    applied: Mapping[str, Applied] = field(default_factory=dict)  # autoApply's state as status last recorded it


@dataclass(frozen=True)
class PodEntry:
    """A pod with a sidecar: its labels/annotations (policy inputs) and where its admin port is."""

    view: PodView
    ip: str | None
    terminating: bool = False


@dataclass(frozen=True)
class BarePod:
    """A live pod without the sidecar: enough to tell whether a budget selects it."""

    name: str
    labels: Mapping[str, str]


BudgetIndex = kopf.Index[str, BudgetEntry]  # namespace → its TokenBudgets
TierIndex = kopf.Index[str, TierEntry]  # namespace → its ThinkTiers
PodIndex = kopf.Index[str, PodEntry]  # namespace → its pods with a sidecar
BarePodIndex = kopf.Index[str, BarePod]  # namespace → its live pods without the sidecar


def has_sidecar(spec: Mapping[str, Any], **_: Any) -> bool:
    """Whether the pod runs our sidecar (as a native sidecar or a regular container)."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(isinstance(c, Mapping) and c.get("name") == names.SIDECAR_CONTAINER for c in containers)


def lacks_sidecar(spec: Mapping[str, Any], **_: Any) -> bool:
    return not has_sidecar(spec)


@kopf.index(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL, id="tokenbudget_budgets")
async def tokenbudget_budgets(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, BudgetEntry]:
    try:
        view = BudgetView.from_body(body)
    except pydantic.ValidationError as exc:  # the apiserver validated it; a newer schema may still differ
        logger.warning("TokenBudget %s/%s not understood, ignored: %s", namespace, body.get("metadata", {}).get(
            "name"), exc.error_count())
        return {}
    status = body.get("status") or {}
    return {view.namespace: BudgetEntry(view, tuple(status.get("conditions") or ()), status.get("stage"),
                                        tuple(status.get("notifications") or ()))}


@kopf.index(names.GROUP, names.VERSION, names.THINKTIER_PLURAL, id="tokenbudget_tiers")
async def tokenbudget_tiers(body: kopf.Body, **_: Any) -> dict[str, TierEntry]:
    try:
        view = TierView.from_body(body)
    except pydantic.ValidationError as exc:
        logger.warning("ThinkTier %s not understood, ignored: %d errors", body.get("metadata", {}).get("name"),
                       exc.error_count())
        return {}
    status = body.get("status") or {}
    return {view.namespace: TierEntry(view, tuple(status.get("conditions") or ()), from_status(status))}


@kopf.index("pods", id="tokenbudget_sidecar_pods", when=has_sidecar)
async def tokenbudget_sidecar_pods(body: kopf.Body, **_: Any) -> dict[str, PodEntry]:
    view = PodView.from_body(body)
    status = body.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return {}
    meta = body.get("metadata") or {}
    return {view.namespace: PodEntry(view, status.get("podIP") or None, bool(meta.get("deletionTimestamp")))}


@kopf.index("pods", id="tokenbudget_bare_pods", when=lacks_sidecar)
async def tokenbudget_bare_pods(body: kopf.Body, **_: Any) -> dict[str, BarePod]:
    """Pods a budget may select that bypass the sidecar; finished and terminating pods are not counted."""
    meta = body.get("metadata") or {}
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed") or meta.get("deletionTimestamp"):
        return {}
    return {str(meta.get("namespace", "")): BarePod(str(meta.get("name", "")), dict(meta.get("labels") or {}))}


__all__ = ["BarePod", "BarePodIndex", "BudgetEntry", "BudgetIndex", "PodEntry", "PodIndex", "TierEntry", "TierIndex",
           "has_sidecar", "lacks_sidecar"]
