"""Providers' published limits on thinking budgets, in tokens: one table for the sidecar and the operator.

The sidecar fits every budget it writes into these limits (`tokenbudget_sidecar.thinking.providers`), and
the operator reports a ThinkTier tier that no model takes as declared (`tokenbudget_operator.reconciler.tier_checks`).
Both read this module, so the ceiling the operator warns about is the one the sidecar clamps to.

- Anthropic: `1024 ≤ thinking.budget_tokens < max_tokens ≤ anthropic_max_output(model)`; max_tokens counts
  thinking and answer together.
- Gemini 2.5: `thinkingBudget` within `gemini_budget_range(model)` (0 switches thinking off, -1 is dynamic).
- Gemini 3 and OpenAI take a level (thinkingLevel, reasoning_effort), not a number: no limit here.

Pure functions of the model id; no I/O.
"""

from __future__ import annotations

import fnmatch
import re

from tokenbudget_api.thinktier import ANTHROPIC_MAX_OUTPUT, GEMINI_MAX_THINKING

ANTHROPIC_UNKNOWN_MAX_OUTPUT = 32_000  # unrecognised Claude ids: the smallest published max output
GEMINI_DEFAULT_BUDGET_RANGE = (1, 24_576)  # a 2.5 model none of the patterns names: Flash's range

_CLAUDE_NEW = re.compile(r"claude-(opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?!\d)")  # claude-sonnet-4-5-2025…
_CLAUDE_OLD = re.compile(r"claude-(\d+)(?:-(\d))?-(opus|sonnet|haiku)")  # claude-3-7-sonnet-2025…

GEMINI_BUDGET_RANGES: list[tuple[str, tuple[int, int]]] = [
    # (pattern, (smallest non-zero budget, largest)), first match wins; Gemini API docs for 2.5.
    ("gemini-2.5-flash-lite*", (512, 24_576)),
    ("gemini-2.5-pro*", (128, GEMINI_MAX_THINKING)),
    ("gemini-2.5-flash*", (1, 24_576)),
]

LARGEST_MAX_OUTPUT = max(ANTHROPIC_MAX_OUTPUT, *(hi for _, (_, hi) in GEMINI_BUDGET_RANGES),
                         GEMINI_DEFAULT_BUDGET_RANGE[1])
"""The most thinking any known model takes as a number: Claude's largest max_tokens (the budget must stay
below it, next to the answer). A budget above it is cut down on every model that takes a number."""


def model_name(model: str) -> str:
    """Lower case, without a fine-tune prefix or an org/ path (`ft:gpt-5:…`, `deepseek-ai/DeepSeek-R1`)."""
    name = model.lower().removeprefix("ft:")
    return name.rsplit("/", 1)[-1]


def claude_version(model: str) -> tuple[str, int, int] | None:
    """(family, major, minor) from any Claude id, Bedrock/Vertex prefixes included; None if not Claude."""
    name = model.lower()
    m = _CLAUDE_NEW.search(name)
    if m:
        return m.group(1), int(m.group(2)), int(m.group(3) or 0)
    m = _CLAUDE_OLD.search(name)
    if m:
        return m.group(3), int(m.group(1)), int(m.group(2) or 0)
    return None


def anthropic_max_output(model: str) -> int:
    """Largest max_tokens the model accepts (published limits; conservative for unknown models)."""
    version = claude_version(model)
    if version is None:
        return ANTHROPIC_UNKNOWN_MAX_OUTPUT
    kind, major, minor = version
    if kind == "opus" and (major, minor) <= (4, 1) and major == 4:
        return 32_000
    if kind == "opus" and (major, minor) >= (4, 6):
        return ANTHROPIC_MAX_OUTPUT
    return 64_000


def gemini_budget_range(model: str) -> tuple[int, int]:
    """(smallest non-zero, largest) thinkingBudget a Gemini 2.5 model accepts."""
    name = model_name(model)
    for pattern, bounds in GEMINI_BUDGET_RANGES:
        if fnmatch.fnmatchcase(name, pattern):
            return bounds
    return GEMINI_DEFAULT_BUDGET_RANGE


__all__ = [
    "ANTHROPIC_MAX_OUTPUT",
    "ANTHROPIC_UNKNOWN_MAX_OUTPUT",
    "GEMINI_BUDGET_RANGES",
    "GEMINI_DEFAULT_BUDGET_RANGE",
    "GEMINI_MAX_THINKING",
    "LARGEST_MAX_OUTPUT",
    "anthropic_max_output",
    "claude_version",
    "gemini_budget_range",
    "model_name",
]
