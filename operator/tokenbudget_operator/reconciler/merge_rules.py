"""How the budgets that select one pod combine where they overlap: upstreams, prices, onDisconnect, failMode.

Each rule takes the strict or predictable side and reports a conflict instead of silently picking; the
table in effective.py's docstring says which and why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal

from tokenbudget_api.policy import PolicyUpstream, default_upstreams
from tokenbudget_api.tokenbudget import FailMode, ModelPrice, OnDisconnect, PriceTier, Upstream
from tokenbudget_operator.reconciler.conditions import Problem, Reason
from tokenbudget_operator.reconciler.views import BudgetView


def _endpoint(u: Upstream) -> tuple[object, ...]:
    """What makes two declarations of one upstream name the same (a trailing slash is not a difference)."""
    ref = u.api_key_secret_ref
    return (u.base_url.rstrip("/"), u.dialect.value, ref.name if ref else None, ref.key if ref else None,
            tuple(sorted((u.deployments or {}).items())))


def _policy_upstream(u: Upstream, key_dir: str) -> PolicyUpstream:
    ref = u.api_key_secret_ref
    key_file = f"{key_dir.rstrip('/')}/{ref.name}/{ref.key}" if ref is not None else None
    return PolicyUpstream(name=u.name, base_url=u.base_url, dialect=u.dialect, api_key_file=key_file,
                          api_key_secret=ref.name if ref is not None else None, deployments=u.deployments)


def merge_upstreams(budgets: Sequence[BudgetView], key_dir: str) -> tuple[list[PolicyUpstream], list[Problem]]:
    """Union by name, first budget by name wins a conflict; defaults for names nobody declares.

    The defaults are included when no budget matches, or when at least one matching budget declares no
    upstreams (an empty list counts as none): such a budget relies on the public endpoints.
    """
    chosen: dict[str, tuple[Upstream, BudgetView]] = {}
    problems: list[Problem] = []
    for b in budgets:
        for u in b.spec.upstreams or []:
            first = chosen.get(u.name)
            if first is None:
                chosen[u.name] = (u, b)
            elif _endpoint(first[0]) != _endpoint(u):
                winner, owner = first
                problems.append(Problem(
                    Reason.UPSTREAM_CONFLICT,
                    f"upstream {u.name} is {u.base_url} ({u.dialect.value}) in budget {b.name} but "
                    f"{winner.base_url} ({winner.dialect.value}) in budget {owner.name}; pods selected by both "
                    f"use {owner.name}'s (first by name)",
                    b.key,
                ))
    out = {name: _policy_upstream(u, key_dir) for name, (u, _) in chosen.items()}
    if not budgets or any(not b.spec.upstreams for b in budgets):
        for d in default_upstreams():
            out.setdefault(d.name, d)
    return [out[name] for name in sorted(out)], problems


def _tier_price(price: ModelPrice, above: int) -> tuple[Decimal, Decimal]:
    """(input, output) per million for a call with more than `above` input tokens under `price`."""
    best: PriceTier | None = None
    for t in price.tiers or []:
        if t.above_input_tokens <= above and (best is None or t.above_input_tokens > best.above_input_tokens):
            best = t
    if best is None:
        return price.input_per_million, price.output_per_million
    return best.input_per_million, best.output_per_million


def _max_optional(prices: Sequence[ModelPrice], attr: str) -> Decimal | None:
    """Highest explicit value of an optional price, counting an unset one as the input price it defaults to."""
    values = [getattr(p, attr) for p in prices]
    if all(v is None for v in values):
        return None
    return max(v if v is not None else p.input_per_million for v, p in zip(values, prices, strict=True))


def highest_price(prices: Sequence[ModelPrice]) -> ModelPrice:
    """The field-by-field maximum of several overrides for one model, context tiers included.

    Price tiers are step functions of input size, so the merged tiers are the pointwise maximum of those
    functions, evaluated at every threshold any override declares.
    """
    thresholds = sorted({t.above_input_tokens for p in prices for t in p.tiers or []})
    tiers = [
        PriceTier(above_input_tokens=above,
                  input_per_million=max(_tier_price(p, above)[0] for p in prices),
                  output_per_million=max(_tier_price(p, above)[1] for p in prices))
        for above in thresholds
    ]
    return ModelPrice(
        model=prices[0].model,
        input_per_million=max(p.input_per_million for p in prices),
        output_per_million=max(p.output_per_million for p in prices),
        cached_input_per_million=_max_optional(prices, "cached_input_per_million"),
        cache_write_per_million=_max_optional(prices, "cache_write_per_million"),
        tiers=tiers or None,
    )


def merge_prices(budgets: Sequence[BudgetView]) -> tuple[list[ModelPrice], list[Problem]]:
    """Every override applies; where budgets disagree on a model, the highest price (and a PriceConflict)."""
    by_model: dict[str, list[tuple[ModelPrice, BudgetView]]] = {}
    for b in budgets:
        for p in (b.spec.models.prices if b.spec.models else None) or []:
            by_model.setdefault(p.model, []).append((p, b))
    out: list[ModelPrice] = []
    problems: list[Problem] = []
    for model in sorted(by_model):
        entries = by_model[model]
        distinct = {json.dumps(p.wire(), sort_keys=True) for p, _ in entries}
        if len(distinct) == 1:
            out.append(entries[0][0])
            continue
        merged = highest_price([p for p, _ in entries])
        out.append(merged)
        who = ", ".join(b.name for _, b in entries)
        for _, b in entries:
            problems.append(Problem(
                Reason.PRICE_CONFLICT,
                f"budgets {who} give different prices for model {model}; pods selected by several of them use "
                "the highest of each price",
                b.key,
            ))
    return out, problems


def merge_on_disconnect(budgets: Sequence[BudgetView]) -> OnDisconnect:
    """Drain unless every matching budget says Cut (Drain keeps usage exact)."""
    if budgets and all(b.spec.on_disconnect is OnDisconnect.CUT for b in budgets):
        return OnDisconnect.CUT
    return OnDisconnect.DRAIN


def merge_fail_mode(budgets: Sequence[BudgetView]) -> FailMode:
    """Open only if every matching budget says Open (Closed is the strictest, and the default)."""
    if budgets and all(b.spec.fail_mode is FailMode.OPEN for b in budgets):
        return FailMode.OPEN
    return FailMode.CLOSED


__all__ = ["highest_price", "merge_fail_mode", "merge_on_disconnect", "merge_prices", "merge_upstreams"]
