"""One pod's effective policy: every TokenBudget and ThinkTier that selects it, combined into a `SidecarPolicy`.

A pure function of what the operator's indexes hold (`PodView`, `BudgetView`, `TierView`), so the kopf
handlers stay tiny and every combination rule below is a row in tests/reconciler/test_effective_policy.py.

Which objects apply: every TokenBudget and ThinkTier *in the pod's namespace* whose `selector` matches
the pod's labels (Kubernetes LabelSelector semantics: an empty selector selects every pod). They are
ordered by name, so the result never depends on the order an index returned them in.

How overlaps combine (README table; merge_rules.py implements the first five rows):

    aspect          rule                                                   why
    budgets         every matching budget applies independently; the      the sidecar admits a call only if every
                    strictest cap wins in effect                           budget's every window has room for it
    upstreams       union of the budgets' upstreams; a budget without any  one path prefix must mean one endpoint;
                    contributes the defaults (openai, anthropic, gemini)   "first by name" is predictable and is
                    for names no budget declares; same name, different     reported, not silently picked
                    baseURL/dialect/key: the budget first by name wins,
                    UpstreamConflict reported
    prices          an override for a model in any budget applies; if      overestimating spend is the safe side:
                    budgets disagree, the highest price field by field     a dollar cap is never loosened by a
                    (input, output, cached, cache write, every context     cheaper override elsewhere
                    tier), PriceConflict reported
    onDisconnect    Drain unless every matching budget says Cut            Drain reads on for the provider's real
                                                                           usage; Cut only estimates it
    failMode        Closed if any matching budget says Closed              the strictest: an unreachable operator
                                                                           must not open a budget someone closed
    ThinkTiers      every matching ThinkTier is passed on, by name;        the annotation authorizes, the ThinkTier
                    Required tiers only as authorized by the pod's         decides what needs authorizing
                    annotation (comma-separated) and only when they exist
                    and require authorization; an unknown name is reported

The version is a digest of the inputs' identities (kind, namespace, name, uid, generation) and of the
policy's content (leases included), so the same inputs always give the same version and the sidecar's
idempotent PUT is a no-op; a deleted and re-created budget with the same spec gets a new version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenbudget_api import names
from tokenbudget_api.policy import (
    BudgetPolicy,
    Lease,
    SidecarPolicy,
    ThinkTierPolicy,
)
from tokenbudget_api.thinktier import Authorization
from tokenbudget_operator.reconciler.conditions import Problem, Reason
from tokenbudget_operator.reconciler.merge_rules import (
    merge_fail_mode,
    merge_on_disconnect,
    merge_prices,
    merge_upstreams,
)
from tokenbudget_operator.reconciler.tier_checks import tier_problems as tier_fit_problems
from tokenbudget_operator.reconciler.views import BudgetView, PodView, TierView, authorized_tier_names, selects


@dataclass(frozen=True)
class Effective:
    """The policy for one pod, the objects it came from, and what was wrong with them."""

    policy: SidecarPolicy
    budgets: tuple[str, ...]  # "namespace/name" of the matching TokenBudgets, by name
    tiers: tuple[str, ...]  # "namespace/name" of the matching ThinkTiers, by name
    problems: tuple[Problem, ...]


def think_tier_policies(pod: PodView, tiers: Sequence[TierView]) -> tuple[list[ThinkTierPolicy], list[Problem]]:
    """Each matching ThinkTier, with the Required tiers the pod's annotation authorizes."""
    requested = authorized_tier_names(pod)
    out: list[ThinkTierPolicy] = []
    known: set[str] = set()
    for t in tiers:
        known.update(tier.name for tier in t.spec.tiers)
        required = {tier.name for tier in t.spec.tiers if tier.authorization is Authorization.REQUIRED}
        out.append(ThinkTierPolicy(namespace=t.namespace, name=t.name, generation=t.generation, spec=t.spec,
                                   authorized_tiers=sorted(required.intersection(requested)),
                                   applied_budgets=dict(t.applied) or None))
    problems: list[Problem] = []
    unknown = [name for name in requested if name not in known]
    if unknown:
        problems.append(Problem(
            Reason.UNKNOWN_AUTHORIZED_TIER,
            f"annotation {names.AUTHORIZED_TIERS_ANNOTATION} names tier(s) {', '.join(unknown)} that no "
            "ThinkTier selecting this pod defines",
            pod.key,
        ))
    if len(tiers) > 1:
        listed = ", ".join(t.name for t in tiers)
        problems.extend(Problem(
            Reason.OVERLAPPING_THINK_TIERS,
            f"ThinkTiers {listed} all select pod {pod.name}; they are applied in name order",
            t.key,
        ) for t in tiers)
    return out, problems


# ----- the policy ----------------------------------------------------------------------------------------


def policy_version(
    budgets: Iterable[BudgetView], tiers: Iterable[TierView], content: Mapping[str, Any]
) -> str:
    """A digest of the inputs' identities and generations and of the policy content (without version)."""
    inputs = sorted(
        [["TokenBudget", b.namespace, b.name, b.uid, b.generation] for b in budgets]
        + [["ThinkTier", t.namespace, t.name, t.uid, t.generation] for t in tiers]
    )
    body = json.dumps({"inputs": inputs, "content": content}, sort_keys=True, separators=(",", ":"))
    return f"sha256-{hashlib.sha256(body.encode()).hexdigest()[:16]}"


def resolve(
    pod: PodView,
    budgets: Iterable[BudgetView],
    tiers: Iterable[TierView],
    upstream_key_dir: str,
    *,
    leases: Mapping[str, Sequence[Lease]] | None = None,
    sharing: Mapping[str, int] | None = None,
) -> Effective:
    """The effective policy for `pod`, plus the matching objects and any problems (see module docstring).

    `leases` maps a budget's "namespace/name" to its grants for this pod (from `leases.LeaseAllocator`);
    a budget absent from it is enforced locally against its full limits. `sharing` maps a budget with a
    Throttle step to how many pods it selects (they split its rate, see `BudgetPolicy.pods`).
    """
    matching = sorted((b for b in budgets if selects(b, pod)), key=lambda b: b.name)
    matching_tiers = sorted((t for t in tiers if selects(t, pod)), key=lambda t: t.name)
    upstreams, problems = merge_upstreams(matching, upstream_key_dir)
    prices, price_problems = merge_prices(matching)
    tier_policies, tier_problems = think_tier_policies(pod, matching_tiers)
    tier_problems += tier_fit_problems(matching_tiers, matching)
    budget_policies = []
    for b in matching:
        granted = sorted((leases or {}).get(b.key, ()), key=lambda x: (x.window, x.key or ""))
        budget_policies.append(BudgetPolicy(namespace=b.namespace, name=b.name, generation=b.generation,
                                            spec=b.spec, leases=granted or None,
                                            pods=(sharing or {}).get(b.key)))
    draft = SidecarPolicy(
        version="pending",  # replaced below; a non-empty value skips the content-only default
        upstreams=upstreams,
        budgets=budget_policies,
        think_tiers=tier_policies,
        prices=prices,
        on_disconnect=merge_on_disconnect(matching),
        fail_mode=merge_fail_mode(matching),
    )
    content = draft.model_dump(mode="json", by_alias=True, exclude={"version"})
    policy = draft.model_copy(update={"version": policy_version(matching, matching_tiers, content)})
    return Effective(
        policy=policy,
        budgets=tuple(b.key for b in matching),
        tiers=tuple(t.key for t in matching_tiers),
        problems=tuple(problems + price_problems + tier_problems),
    )


def effective_policy(
    pod: PodView,
    budgets: list[BudgetView],
    tiers: list[TierView],
    upstream_key_dir: str,
    *,
    leases: Mapping[str, Sequence[Lease]] | None = None,
) -> SidecarPolicy:
    """The `SidecarPolicy` to PUT to `pod`'s sidecar; `resolve` also returns the problems found."""
    return resolve(pod, budgets, tiers, upstream_key_dir, leases=leases).policy


__all__ = [
    "Effective",
    "effective_policy",
    "policy_version",
    "resolve",
    "think_tier_policies",
]
