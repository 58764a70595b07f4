"""What the reconciler's indexes hold: the parts of Pods, TokenBudgets and ThinkTiers that policy depends on.

Frozen and parsed once per watch event, so every later rule (effective.py, the checks, the loops) reads
typed fields; status is never an input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenbudget_api import names
from tokenbudget_api.thinktier import ThinkTierSpec
from tokenbudget_api.tokenbudget import TokenBudgetSpec


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata") or {}
    return meta if isinstance(meta, Mapping) else {}


def _str_map(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def _identity(body: Mapping[str, Any]) -> dict[str, Any]:
    """namespace, name, uid and generation of a kopf body, the fields every view shares."""
    meta = _meta(body)
    return {"namespace": str(meta.get("namespace", "")), "name": str(meta.get("name", "")),
            "uid": str(meta.get("uid", "")), "generation": int(meta.get("generation") or 0)}


class _Keyed:
    namespace: str
    name: str

    @property
    def key(self) -> str:
        """"namespace/name": how the sidecar names budgets and tiers in records and decisions."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodView(_Keyed):
    """The parts of a Pod the policy depends on (labels choose budgets, an annotation authorizes tiers)."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView:
        meta = _meta(body)
        return cls(**_identity(body), labels=_str_map(meta.get("labels")),
                   annotations=_str_map(meta.get("annotations")))


@dataclass(frozen=True)
class BudgetView(_Keyed):
    """A TokenBudget as indexed: identity, generation and parsed spec (status is not an input)."""

    namespace: str
    name: str
    spec: TokenBudgetSpec
    uid: str = ""
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> BudgetView:
        return cls(**_identity(body), spec=TokenBudgetSpec.model_validate(body.get("spec") or {}))


@dataclass(frozen=True)
class TierView(_Keyed):
    """A ThinkTier as indexed."""

    namespace: str
    name: str
    spec: ThinkTierSpec
    uid: str = ""
    generation: int = 0
    # autoApply's budgets per class (thinktier_apply.py), attached by the Fleet; never part of the spec.
    applied: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TierView:
        return cls(**_identity(body), spec=ThinkTierSpec.model_validate(body.get("spec") or {}))


def selects(view: BudgetView | TierView, pod: PodView) -> bool:
    """Whether `view` applies to `pod`: same namespace and its selector matches the pod's labels."""
    return view.namespace == pod.namespace and view.spec.selector.matches(dict(pod.labels))


def authorized_tier_names(pod: PodView) -> list[str]:
    """Tier names the pod's annotation lists: comma-separated, blanks ignored, de-duplicated, in order."""
    raw = pod.annotations.get(names.AUTHORIZED_TIERS_ANNOTATION, "")
    out: list[str] = []
    for part in raw.split(","):
        tier = part.strip()
        if tier and tier not in out:
            out.append(tier)
    return out


__all__ = ["BudgetView", "PodView", "TierView", "authorized_tier_names", "selects"]
