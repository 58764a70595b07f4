"""Tiers no provider honors as declared: the rules of tier_checks.py, and the provider limits they share with
the sidecar (tokenbudget_api.thinking_limits)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tokenbudget_api import thinking_limits
from tokenbudget_api.thinktier import ThinkTierSpec, ThinkTierStatus
from tokenbudget_api.tokenbudget import TokenBudgetSpec
from tokenbudget_operator.reconciler.effective import resolve
from tokenbudget_operator.reconciler.thinktier_status import thinktier_status
from tokenbudget_operator.reconciler.tier_checks import output_ceiling, tier_problems, tier_spec_problems
from tokenbudget_operator.reconciler.views import BudgetView, PodView, TierView
from tokenbudget_sidecar.thinking import providers

POD = PodView("team-a", "chat-0", "uid-0", labels={"app": "chat"})


def tier_view(*budgets: int, name: str = "tiers", required: tuple[int, ...] = ()) -> TierView:
    """A ThinkTier with tiers t0, t1, … of `budgets`; the indexes in `required` need authorization."""
    spec = ThinkTierSpec.model_validate({
        "selector": {"matchLabels": {"app": "chat"}}, "defaultTier": "t0",
        "tiers": [{"name": f"t{i}", "budgetTokens": b, "authorization": "Required" if i in required else
                   "NotRequired"} for i, b in enumerate(budgets)]})
    return TierView(namespace="team-a", name=name, spec=spec, uid=name, generation=1)


def budget_view(name: str, cap: int | None, enforcement: str = "Enforce", app: str = "chat") -> BudgetView:
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": app}}, "enforcement": enforcement}
    if cap is not None:
        spec["request"] = {"maxOutputTokens": cap}
    return BudgetView(namespace="team-a", name=name, spec=TokenBudgetSpec.model_validate(spec), uid=name, generation=1)


def found(problems: list[Any]) -> list[tuple[str, str, str]]:
    """(reason, tier name, ThinkTier key) of each problem."""
    return [(p.reason, p.message.split(" ", 2)[1], p.source) for p in problems]


LARGEST = thinking_limits.LARGEST_MAX_OUTPUT


@pytest.mark.parametrize(("budgets", "expected"), [
    ((4096, 32_768, 65_536), []),
    ((4096, LARGEST), []),  # exactly Claude's largest max_tokens: "all it allows", fitted by the sidecar
    ((4096, LARGEST + 1), ["t1"]),
    ((200_000, 4096, 131_072), ["t0", "t2"]),
], ids=["fits", "at-largest-max-output", "one-above", "each-tier-above-reported"])
def test_a_tier_above_what_any_model_takes_as_a_number(budgets: tuple[int, ...], expected: list[str]) -> None:
    problems = tier_spec_problems(tier_view(*budgets))
    assert found(problems) == [("TierAboveProviderMax", t, "team-a/tiers") for t in expected]


def test_the_provider_max_message_names_the_tier_its_budget_and_the_limit() -> None:
    (problem,) = tier_spec_problems(tier_view(4096, 150_000))
    assert problem.message.startswith("tier t1 (150000 thinking tokens) is above 128000")
    assert "Gemini 2.5 at most 32768" in problem.message


@pytest.mark.parametrize(("tiers", "budgets", "expected"), [
    (tier_view(2048, 16_000), [budget_view("caps", 16_000)], ["t1"]),  # at the cap: thinking < output
    (tier_view(2048, 15_999), [budget_view("caps", 16_000)], []),
    (tier_view(2048, 16_000), [budget_view("caps", 16_000, "DryRun")], []),  # a dry run caps nothing
    (tier_view(2048, 16_000), [budget_view("none", None)], []),
    (tier_view(2048, 16_000), [], []),
    (tier_view(1024, 8192), [budget_view("loose", 32_000), budget_view("tight", 1024)], ["t0", "t1"]),
    (tier_view(2048, 65_536, required=(1,)), [budget_view("caps", 16_000)], ["t1"]),  # Required counts
], ids=["at-cap", "below-cap", "dry-run", "no-cap", "no-budget", "tightest-cap-applies", "required-tier"])
def test_a_tier_not_below_the_output_cap_of_a_budget_on_the_same_pod(
    tiers: TierView, budgets: list[BudgetView], expected: list[str]
) -> None:
    assert found(tier_problems([tiers], budgets)) == [("TierAboveOutputCap", t, "team-a/tiers") for t in expected]


def test_each_thinktier_gets_its_own_tiers_problems() -> None:
    problems = tier_problems([tier_view(8192, name="a"), tier_view(2048, name="b")], [budget_view("caps", 4096)])
    assert found(problems) == [("TierAboveOutputCap", "t0", "team-a/a")]


def test_the_tightest_cap_and_its_budget_are_named() -> None:
    (problem,) = tier_problems([tier_view(8192)], [budget_view("loose", 32_000), budget_view("tight", 4000)])
    assert problem.message.startswith("tier t0 (8192 thinking tokens) is not below the output cap 4000 ")
    assert "TokenBudget team-a/tight" in problem.message
    assert "no thinking at all" not in problem.message


def test_equal_caps_name_the_first_budget_by_key() -> None:
    ceiling = output_ceiling([budget_view("zeta", 4000), budget_view("alpha", 4000), budget_view("beta", 9000)])
    assert ceiling is not None
    assert (ceiling[0], ceiling[1].key) == (4000, "team-a/alpha")


def test_a_cap_of_1024_or_less_says_anthropic_calls_get_no_thinking() -> None:
    (problem,) = tier_problems([tier_view(1024)], [budget_view("tiny", 1024)])
    assert "Anthropic calls get no thinking at all" in problem.message
    (problem,) = tier_problems([tier_view(1025)], [budget_view("small", 1025)])
    assert "no thinking at all" not in problem.message


def test_resolve_reports_the_cap_only_when_the_budget_selects_the_same_pod() -> None:
    def cap_problems(*budgets: BudgetView) -> list[tuple[str, str, str]]:
        problems = resolve(POD, list(budgets), [tier_view(2048, 8192)], "/keys").problems
        return [f for f in found(list(problems)) if f[0] == "TierAboveOutputCap"]

    assert cap_problems(budget_view("caps", 4096)) == [("TierAboveOutputCap", "t1", "team-a/tiers")]
    assert cap_problems(budget_view("elsewhere", 4096, app="batch")) == []


def test_status_is_not_ready_for_a_tier_above_provider_max_even_with_no_pod_selected() -> None:
    view = tier_view(4096, 150_000)
    status = thinktier_status(view, [], previous=None, selected=0, synced=0, problems=(),
                              now=dt.datetime.now(dt.UTC))
    ThinkTierStatus.model_validate(status)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TierAboveProviderMax")
    assert ready["message"].startswith("tier t1 (150000 thinking tokens)")


def test_status_lists_pod_problems_first_and_each_problem_once() -> None:
    view = tier_view(4096, 150_000)
    (cap,) = [p for p in tier_problems([view], [budget_view("caps", 100_000)]) if "t1" in p.message]
    spec_problem = tier_spec_problems(view)[0]
    status = thinktier_status(view, [], previous=None, selected=1, synced=1, problems=(cap, spec_problem),
                              now=dt.datetime.now(dt.UTC))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TierAboveOutputCap"
    assert ready["message"] == f"{cap.message}; {spec_problem.message}"


def test_a_well_sized_thinktier_is_ready() -> None:
    status = thinktier_status(tier_view(4096, 32_768), [], previous=None, selected=1, synced=1, problems=(),
                              now=dt.datetime.now(dt.UTC))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Measuring")


# ----- the limits, shared with the sidecar -------------------------------------------------------------------

CLAUDE = ["claude-opus-4-7", "claude-opus-4-6", "claude-opus-4-1", "claude-opus-4-20250514", "claude-sonnet-4-5",
          "claude-3-7-sonnet-20250219", "claude-haiku-4-5", "anthropic.claude-sonnet-4-5-v1:0", "claude-next"]
GEMINI = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-flash-preview-09-2025",
          "models/gemini-2.5-unknown"]


def test_the_sidecar_fits_budgets_with_the_same_functions_the_operator_checks_against() -> None:
    assert providers.anthropic_max_output is thinking_limits.anthropic_max_output
    assert providers.gemini_budget_range is thinking_limits.gemini_budget_range
    assert providers.claude_version is thinking_limits.claude_version


def test_the_largest_max_output_is_the_largest_any_known_model_takes() -> None:
    claude = [thinking_limits.anthropic_max_output(m) for m in CLAUDE]
    gemini = [thinking_limits.gemini_budget_range(m)[1] for m in GEMINI]
    assert max(claude + gemini) == LARGEST == 128_000
    assert max(gemini) == thinking_limits.GEMINI_MAX_THINKING == 32_768
    assert thinking_limits.anthropic_max_output("claude-next") == thinking_limits.ANTHROPIC_UNKNOWN_MAX_OUTPUT
    assert thinking_limits.gemini_budget_range("gemini-2.5-newthing") == thinking_limits.GEMINI_DEFAULT_BUDGET_RANGE
