"""ThinkTier tiers that no provider honors as declared, reported on the ThinkTier as Ready=False.

A tier's budgetTokens reaches a provider either as a number (Anthropic `thinking.budget_tokens`, with
1024 ≤ budget < max_tokens ≤ the model's max output; Gemini 2.5 `thinkingBudget` within the model's range)
or as a level (OpenAI `reasoning_effort` by spec.openAIEffort, Gemini 3 `thinkingLevel`). Every budget maps
onto some level, so levels never refuse a tier: they only coarsen it. A tier is therefore "not accepted as
declared" only when every provider that takes a number would have to change it. Two rules, and only these:

- TierAboveProviderMax (spec alone, reported even before any pod is selected): budgetTokens above
  `thinking_limits.LARGEST_MAX_OUTPUT` (128,000: Claude's largest max_tokens, which holds thinking and
  answer; Gemini 2.5 takes at most 32,768). Every call that takes a number is cut down, so the tier is a
  larger number on paper than any call gets. The bound is max_tokens itself, not max_tokens - 1: a tier of
  exactly 128,000 says "all Claude allows", loses only the answer's room as every tier near the top does,
  and the sidecar fits it in; flagging it would be noise. Self-hosted servers' limits are unknown: not counted.
- TierAboveOutputCap (per pod): budgetTokens at or above the output ceiling the enforcing TokenBudgets put
  on a pod the ThinkTier selects (the smallest request.maxOutputTokens, as the sidecar's
  `engine.output_ceiling`; DryRun budgets cap nothing). Thinking counts against output (Anthropic needs
  budget_tokens < max_tokens, Gemini and OpenAI bill thoughts as output), so no call in such a tier can get
  its budget; with a ceiling of 1,024 or less Anthropic calls get no thinking at all. The message names the
  tightest budget. Tiers that require authorization count too: authorizing a pod is an annotation away.

Not rules: two tiers mapping to the same effort level, or a level no tier reaches. The openAIEffort
thresholds are ordered by the CRD, and any ordering is a legitimate way to spread tiers over three levels.
A budget merely close to a cap (budget + the app's answer room above it) is not flagged either: whether
thinking shrinks then depends on each call's own max_tokens.

Pure functions: `tier_spec_problems` of one ThinkTier (called by `thinktier_status`), `tier_problems` of
the ThinkTiers and TokenBudgets that select one pod (called by `effective.resolve`, so a tier is flagged
only where a real pod meets both; the reconciler gathers those per-pod problems by ThinkTier key).
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenbudget_api.thinking_limits import GEMINI_MAX_THINKING, LARGEST_MAX_OUTPUT
from tokenbudget_api.thinktier import ANTHROPIC_MIN_THINKING
from tokenbudget_api.tokenbudget import Enforcement
from tokenbudget_operator.reconciler.conditions import Problem, Reason
from tokenbudget_operator.reconciler.views import BudgetView, TierView


def output_ceiling(budgets: Sequence[BudgetView]) -> tuple[int, BudgetView] | None:
    """The smallest request.maxOutputTokens of the enforcing `budgets` and the budget that sets it (ties: by
    key, so the message is stable); None when none caps output."""
    caps = [(b.spec.request.max_output_tokens, b.key, b) for b in budgets
            if b.spec.enforcement is Enforcement.ENFORCE and b.spec.request is not None
            and b.spec.request.max_output_tokens is not None]
    if not caps:
        return None
    cap, _, budget = min(caps, key=lambda c: (c[0], c[1]))
    return cap, budget


def tier_spec_problems(view: TierView) -> list[Problem]:
    """TierAboveProviderMax for each tier of `view` above what any model takes as a number."""
    return [Problem(
        Reason.TIER_ABOVE_PROVIDER_MAX,
        f"tier {tier.name} ({tier.budget_tokens} thinking tokens) is above {LARGEST_MAX_OUTPUT}, the most any "
        f"model takes as a number (Claude's largest max_tokens, thinking and answer together; Gemini 2.5 at most "
        f"{GEMINI_MAX_THINKING}): every call gets less thinking than the tier says", view.key)
        for tier in view.spec.tiers if tier.budget_tokens > LARGEST_MAX_OUTPUT]


def tier_problems(tiers: Sequence[TierView], budgets: Sequence[BudgetView]) -> list[Problem]:
    """TierAboveOutputCap for the tiers of `tiers` (each reported on its ThinkTier), given the `budgets` that
    select the same pod."""
    ceiling = output_ceiling(budgets)
    if ceiling is None:
        return []
    cap, budget = ceiling
    no_thinking = (f"; at {cap} Anthropic calls get no thinking at all (budget_tokens must be at least "
                   f"{ANTHROPIC_MIN_THINKING} and below max_tokens)" if cap <= ANTHROPIC_MIN_THINKING else "")
    return [Problem(
        Reason.TIER_ABOVE_OUTPUT_CAP,
        f"tier {tier.name} ({tier.budget_tokens} thinking tokens) is not below the output cap {cap} "
        f"(request.maxOutputTokens) that TokenBudget {budget.key} enforces on pods this ThinkTier selects: "
        f"thinking counts against output, so every call in the tier gets less thinking than it says{no_thinking}",
        t.key) for t in tiers for tier in t.spec.tiers if tier.budget_tokens >= cap]


__all__ = ["output_ceiling", "tier_problems", "tier_spec_problems"]
