"""Tiers no provider honors as declared: the rules of tier_checks.py, table-tested through `resolve`."""

from __future__ import annotations

from typing import Any

import pytest

from tokenbudget_api.thinktier import ANTHROPIC_MAX_OUTPUT, GEMINI_MAX_THINKING, ThinkTierSpec
from tokenbudget_api.tokenbudget import TokenBudgetSpec
from tokenbudget_operator.effective import BudgetView, PodView, TierView, resolve
from tokenbudget_operator.tier_checks import PROVIDER_MAX_THINKING
from tokenbudget_sidecar.thinking.providers import GEMINI_BUDGET_RANGES, anthropic_max_output

POD = PodView("team-a", "chat-0", "uid-0", labels={"app": "chat"})


def tier_view(*budgets: int) -> TierView:
    spec = ThinkTierSpec.model_validate({
        "selector": {"matchLabels": {"app": "chat"}}, "defaultTier": "t0",
        "tiers": [{"name": f"t{i}", "budgetTokens": b} for i, b in enumerate(budgets)]})
    return TierView(namespace="team-a", name="tiers", spec=spec, uid="t", generation=1)


def budget_view(name: str, cap: int | None, enforcement: str = "Enforce") -> BudgetView:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "chat"}}, "enforcement": enforcement}
    if cap is not None:
        spec["request"] = {"maxOutputTokens": cap}
    return BudgetView(namespace="team-a", name=name, spec=TokenBudgetSpec.model_validate(spec), uid=name, generation=1)


def reasons(tiers: TierView, *budgets: BudgetView) -> list[tuple[str, str]]:
    found = resolve(POD, list(budgets), [tiers], "/keys").problems
    return [(p.reason, p.message.split(" ", 2)[1]) for p in found if p.source == tiers.key]


@pytest.mark.parametrize(("tiers", "budgets", "expected"), [
    (tier_view(4096, 32_000), [], []),
    (tier_view(4096, PROVIDER_MAX_THINKING), [], []),
    (tier_view(4096, PROVIDER_MAX_THINKING + 1), [], [("TierAboveProviderMax", "t1")]),
    (tier_view(2048, 16_000), [budget_view("caps", 16_000)], [("TierAboveOutputCap", "t1")]),
    (tier_view(2048, 15_999), [budget_view("caps", 16_000)], []),
    (tier_view(2048, 16_000), [budget_view("caps", 16_000, "DryRun")], []),  # a dry run caps nothing
    (tier_view(2048, 16_000), [budget_view("none", None)], []),
    (tier_view(1024, 8192), [budget_view("loose", 32_000), budget_view("tight", 1024)],
     [("TierAboveOutputCap", "t0"), ("TierAboveOutputCap", "t1")]),
], ids=["fits", "at-provider-max", "above-provider-max", "at-output-cap", "below-output-cap", "dry-run",
        "no-cap", "tightest-budget-named"])
def test_tier_problems(tiers: TierView, budgets: list[BudgetView], expected: list[tuple[str, str]]) -> None:
    assert reasons(tiers, *budgets) == expected


def test_the_tightest_cap_and_its_budget_are_named() -> None:
    found = resolve(POD, [budget_view("loose", 32_000), budget_view("tight", 4000)], [tier_view(8192)], "/keys")
    (problem,) = [p for p in found.problems if p.source == "team-a/tiers"]
    assert "output cap 4000" in problem.message
    assert "TokenBudget team-a/tight" in problem.message


def test_the_shared_provider_ceilings_are_the_ones_the_sidecar_fits_budgets_into() -> None:
    gemini = max(hi for _, (_, hi) in GEMINI_BUDGET_RANGES)
    claude = max(anthropic_max_output(m) for m in (
        "claude-opus-4-7", "claude-opus-4-1", "claude-sonnet-4-5", "claude-3-7-sonnet-20250219", "claude-haiku-4-5"))
    assert (gemini, claude) == (GEMINI_MAX_THINKING, ANTHROPIC_MAX_OUTPUT)
