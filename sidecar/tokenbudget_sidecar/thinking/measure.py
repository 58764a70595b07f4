"""What one call's thinking actually cost, and whether its answer survived.

Sources, best first: the provider's own count (OpenAI `reasoning_tokens`, Anthropic
`output_tokens_details.thinking_tokens`, Gemini `thoughtsTokenCount`, all normalized into
`Usage.reasoning_tokens`); else an estimate. The estimate for a thinking call without a breakdown is
output - answer (tiktoken over the answer text seen): it is right even when the thinking text is only a
summary (Claude 4) or omitted (`display: "omitted"`), which counting the thinking text would miss.
Only when no usage arrived at all is the thinking text itself counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenbudget_api.usage import UsageRecord, UsageSource
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.dialects.base import Reading

NEAR_EMPTY_TOKENS = 8
"""A truncated answer this short is lost: thinking ate the cap (a bare "The" is no answer)."""
BUDGET_BOUND_SHARE = 0.95
"""Thinking at or above this share of an exact budget: the provider stopped the model, not the model."""

Counter = Callable[[str, list[str]], int]


@dataclass(frozen=True)
class Measurement:
    thinking_tokens: int
    answer_tokens: int
    estimated: bool  # thinking_tokens is our estimate, not the provider's count
    truncated: bool  # the provider stopped at the output cap (length / incomplete / max_tokens / MAX_TOKENS)
    thinking_only: bool  # truncated with an empty or near-empty answer: billed, and nothing to show for it
    budget_bound: bool  # thinking reached the exact budget: the model was cut short, silently


def split_inline_thinking(answer: str) -> tuple[str, str]:
    """(thinking, answer) of a self-hosted model that writes `<think>…</think>` into its content."""
    start = answer.find("<think>")
    if start < 0:
        return "", answer
    end = answer.find("</think>", start)
    if end < 0:  # cut while thinking: nothing of the answer was written
        return answer[start + 7:], answer[:start]
    return answer[start + 7:end], answer[:start] + answer[end + 8:]


def measure(record: UsageRecord, reading: Reading, *, thinking_on: bool, exact_budget: int | None,
            breakdown_optional: bool, count: Counter = tokens.count_sync) -> Measurement:
    """Measure a settled call.

    `exact_budget`: the token budget the provider enforced, if it enforces one. `breakdown_optional`: the
    provider may bill thinking without reporting it apart (Anthropic before 2026, self-hosted servers);
    elsewhere a reported 0 is believed, so tokenizer noise between output and answer is never taken for
    thinking.
    """
    usage = record.usage
    answer_texts = reading.answer_text
    thinking_texts = reading.thinking_text
    joined = "".join(answer_texts)
    if "<think>" in joined:
        inline, rest = split_inline_thinking(joined)
        answer_texts, thinking_texts = [rest], [*thinking_texts, inline]
    answer = count(record.model, answer_texts) if any(answer_texts) else 0
    provider_output = usage.output_tokens if record.source is UsageSource.PROVIDER else 0
    thinking, estimated = usage.reasoning_tokens, False
    unreported = breakdown_optional and provider_output - answer > NEAR_EMPTY_TOKENS
    if thinking == 0 and thinking_on and (unreported or any(thinking_texts)):
        estimated = True
        if provider_output:
            thinking = provider_output - answer
        else:
            thinking = count(record.model, thinking_texts) if any(thinking_texts) else 0
    visible = max(provider_output - thinking, 0) if provider_output else answer
    # The output cap, not a broken stream (the record calls both truncated; only the cap says how thinking went).
    truncated = record.truncated and (reading.truncated or not reading.broke)
    bound = exact_budget is not None and exact_budget > 0 and thinking >= exact_budget * BUDGET_BOUND_SHARE
    return Measurement(thinking_tokens=max(thinking, 0), answer_tokens=visible, estimated=estimated,
                       truncated=truncated, thinking_only=truncated and visible <= NEAR_EMPTY_TOKENS,
                       budget_bound=bound)
