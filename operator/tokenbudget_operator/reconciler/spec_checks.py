"""Misconfigurations visible in a TokenBudget's spec alone, reported as Ready=False with a reason.

These need no pod: a model the spec names (allow list without wildcards, Downgrade model maps) that
neither the price catalog nor spec.models.prices knows. With a dollar limit the sidecar refuses such
calls (it cannot check the limit); without one their spend is reported unpriced. Either way the team
should hear it from `kubectl get tb`, not from a failed call.
"""

from __future__ import annotations

from tokenbudget_api.prices import catalog_price
from tokenbudget_operator.reconciler.conditions import Problem, Reason
from tokenbudget_operator.reconciler.views import BudgetView

WILDCARDS = frozenset("*?[")


def named_models(view: BudgetView) -> list[str]:
    spec = view.spec
    models = [m for m in (spec.models.allow if spec.models else None) or [] if not WILDCARDS & set(m)]
    for step in spec.ladder or []:
        for source, target in (step.model_map or {}).items():
            models += [source, target]
    return sorted(set(models))


def spec_problems(view: BudgetView) -> list[Problem]:
    spec = view.spec
    priced = {p.model for p in (spec.models.prices if spec.models else None) or []}
    urls: list[str | None] = [u.base_url for u in spec.upstreams or []] or [None]
    dollars = any(lim.cost_usd is not None for lim in spec.limits or [])
    unknown = [m for m in named_models(view)
               if m not in priced and all(catalog_price(m, url) is None for url in urls)]
    if not unknown:
        return []
    listed = ", ".join(unknown)
    if dollars:
        return [Problem(Reason.MODEL_WITHOUT_PRICE, f"no price for {listed} in the catalog or spec.models.prices: "
                        "calls to them are refused, since the costUSD limit cannot be checked", view.key)]
    return [Problem(Reason.UNKNOWN_MODEL, f"{listed} not in the price catalog: their spend is reported unpriced; "
                    "add spec.models.prices", view.key)]
