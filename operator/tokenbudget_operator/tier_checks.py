"""ThinkTier tiers that no provider can honor as declared, reported on the ThinkTier as Ready=False.

A tier's budgetTokens reaches providers as a number (Anthropic `thinking.budget_tokens`, Gemini 2.5
`thinkingBudget`) or as a level (OpenAI `reasoning_effort`, Gemini 3 `thinkingLevel`: any budget maps to
one, so levels never refuse a tier, they only coarsen it). Two rules, both about the number:

- TierAboveProviderMax: above the largest output any provider that takes a number allows (Claude's
  largest max_tokens; Gemini 2.5 Pro's thinkingBudget is smaller): every such call is clamped, so the
  tier is a larger number on paper than any call gets. Not "≥": a tier of exactly 128,000 is the
  common way to say "as much as Claude allows", and the sidecar fits it in (a few tokens less).
- TierAboveOutputCap: at or above the output cap (request.maxOutputTokens) an enforcing TokenBudget puts
  on the same pods. Thinking counts against the output (Anthropic needs budget_tokens < max_tokens, Gemini
  bills thoughts as output), so the sidecar must shrink every such call's thinking below the cap, and
  with a cap of 1,024 or less Anthropic calls lose thinking entirely.

Pure: the caller passes the tiers and budgets that select one pod (`effective.resolve`), so a tier is
flagged only where a real pod meets both.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from tokenbudget_api.thinktier import ANTHROPIC_MAX_OUTPUT, GEMINI_MAX_THINKING
from tokenbudget_api.tokenbudget import Enforcement
from tokenbudget_operator.conditions import Problem

if TYPE_CHECKING:  # effective.py calls this module
    from tokenbudget_operator.effective import BudgetView, TierView

PROVIDER_MAX_THINKING = max(ANTHROPIC_MAX_OUTPUT, GEMINI_MAX_THINKING)


class TierReason(StrEnum):
    ABOVE_PROVIDER_MAX = "TierAboveProviderMax"
    ABOVE_OUTPUT_CAP = "TierAboveOutputCap"


def tier_problems(tiers: Sequence[TierView], budgets: Sequence[BudgetView]) -> list[Problem]:
    """Problems of `tiers` (each reported on its ThinkTier) given the `budgets` that select the same pod."""
    caps = [(b.spec.request.max_output_tokens, b) for b in budgets
            if b.spec.enforcement is Enforcement.ENFORCE and b.spec.request is not None
            and b.spec.request.max_output_tokens is not None]
    problems: list[Problem] = []
    for t in tiers:
        for tier in t.spec.tiers:
            if tier.budget_tokens > PROVIDER_MAX_THINKING:
                problems.append(Problem(
                    TierReason.ABOVE_PROVIDER_MAX,
                    f"tier {tier.name} ({tier.budget_tokens} thinking tokens) is above what any provider takes "
                    f"as a number (Anthropic below max_tokens ≤ {ANTHROPIC_MAX_OUTPUT}, Gemini ≤ "
                    f"{GEMINI_MAX_THINKING}): every such call gets less", t.key))
            tight = [(cap, b) for cap, b in caps if tier.budget_tokens >= cap]
            if tight:
                cap, b = min(tight, key=lambda x: x[0])
                problems.append(Problem(
                    TierReason.ABOVE_OUTPUT_CAP,
                    f"tier {tier.name} ({tier.budget_tokens} thinking tokens) is not below the output cap {cap} "
                    f"that TokenBudget {b.key} puts on the same pods: thinking counts against output, so every "
                    "call in it gets less thinking than the tier says", t.key))
    return problems


__all__ = ["PROVIDER_MAX_THINKING", "TierReason", "tier_problems"]
