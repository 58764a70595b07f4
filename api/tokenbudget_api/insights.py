"""Waste insights of a TokenBudget: what its spec may set (thresholds, a conversation header) and the
compact `status.insights` block the operator writes.

Why a budget carries them: the sidecar sees every call of the pods a budget selects, so it is the one
place that can tell how much of a workload's input is context sent again, how fast conversations grow,
how much cacheable input missed the provider's cache, what SDK retries cost and how much of the prompt is
tool output. Each figure comes with the dollars it represents at the model's prices, so a team can tell
which waste is worth fixing first. No prompt text is ever stored: only keyed hashes and token counts.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from tokenbudget_api.common import ApiModel, Money, Percent, Quantity

HEADER_NAME_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
CONVERSATION_HEADER = "x-tokenbudget-conversation"
ACCEPTED_HEADER = "x-tokenbudget-accepted"
RETRY_HEADER = "x-stainless-retry-count"  # sent by the official openai and anthropic SDKs on every attempt
CACHE_MIN_TOKENS = 1024  # shortest prefix OpenAI and Anthropic cache: shorter repeats are not cacheable
WINDOW_HOURS = 24  # insights cover the last day, in hourly buckets


class InsightName(StrEnum):
    REPEATED_CONTEXT = "RepeatedContext"  # share of input tokens an earlier call already sent
    CACHE_MISS = "CacheMiss"  # share of cacheable input the provider did not serve from its cache
    RETRY = "Retry"  # share of calls that were SDK retries (costPercent: their share of dollars)
    TOOL_OUTPUT = "ToolOutput"  # share of input tokens that were tool results
    INPUT_GROWTH = "InputGrowth"  # P95 growth of the prompt per conversation turn (tokens, no percent)
    UNACCEPTED_SPEND = "UnacceptedSpend"  # share of dollars on conversations no answer of was accepted


class InsightThresholds(ApiModel):
    """Above any of these, the budget's Waste condition turns True and a Warning Event names the insight."""

    repeated_context_percent: Percent | None = Field(default=None, description="RepeatedContext share.")
    cache_miss_percent: Percent | None = Field(default=None, description="CacheMiss share of cacheable input.")
    retry_percent: Percent | None = Field(default=None, description="Retry share of calls.")
    tool_output_percent: Percent | None = Field(default=None, description="ToolOutput share of input tokens.")
    input_growth_p95_tokens: Quantity | None = Field(
        default=None, description="P95 prompt growth per conversation turn, in tokens.")
    unaccepted_spend_percent: Percent | None = Field(
        default=None, description="Share of dollars on conversations never accepted (needs outcome reports).")


class InsightsSpec(ApiModel):
    """How the sidecar recognizes conversations, and when waste is worth a condition."""

    conversation_header: str | None = Field(
        default=None, pattern=HEADER_NAME_PATTERN,
        description="An app's own request header naming the conversation a call belongs to; "
        "x-tokenbudget-conversation and the Responses previous_response_id / conversation are always read.")
    thresholds: InsightThresholds | None = Field(default=None, description="Condition thresholds.")


class Insight(ApiModel):
    """One kind of waste over the last day: its share, its tokens and the dollars it represents."""

    name: InsightName = Field(description="RepeatedContext, CacheMiss, Retry, ToolOutput, InputGrowth or "
                              "UnacceptedSpend.")
    percent: Percent | None = Field(default=None, description="Share, rounded down (Retry: of calls).")
    cost_percent: Percent | None = Field(default=None, description="Retry: share of dollars.")
    tokens: Quantity = Field(default=0, description="Tokens it covers (InputGrowth: the P95 per turn).")
    calls: Quantity = Field(default=0, description="Calls it covers.")
    cost_usd: Money | None = Field(default=None, alias="costUSD", description="Dollars it represents.")


class InputGrowth(ApiModel):
    """Prompt growth per conversation turn (tokens a turn adds over the previous one)."""

    turns: Quantity = Field(description="Follow-up turns measured.")
    p50_tokens: int = Field(ge=-(10**15), le=10**15, description="Median growth per turn.")
    p95_tokens: int = Field(ge=-(10**15), le=10**15, description="P95 growth per turn.")


class Outcomes(ApiModel):
    """Dollars per accepted outcome: present only when the app reports acceptances (never zero without)."""

    accepted: Quantity = Field(description="Answers reported accepted.")
    cost_per_accepted_usd: Money = Field(alias="costPerAcceptedUSD", description="All spend / accepted.")
    tokens_per_accepted: Quantity = Field(description="All tokens / accepted, rounded down.")
    unaccepted_spend_percent: Percent = Field(
        description="Share of dollars spent on conversations none of whose answers was accepted.")


class ConsumerWaste(ApiModel):
    """One pod or user of the budget: what it re-sent and retried over the last day."""

    kind: str = Field(description="Pod or User.")
    name: str = Field(description="Pod name or user id ((other): those past the per-hour cap, pooled).")
    calls: Quantity = Field(description="Calls measured.")
    repeated_percent: Percent | None = Field(default=None, description="Share of its prompt tokens re-sent.")
    repeated_usd: Money = Field(alias="repeatedUSD", description="Dollars of that repeated context.")
    retry_calls: Quantity = Field(description="SDK retries among its calls.")
    retry_usd: Money = Field(alias="retryUSD", description="Dollars of those retries.")
    cost_usd: Money = Field(alias="costUSD", description="Dollars of all its calls.")


class InsightsStatus(ApiModel):
    """Waste over the last day of the budget's pods, worst (in dollars) first."""

    since: dt.datetime = Field(description="Start of the hour the figures start at.")
    calls: Quantity = Field(description="Metered calls measured.")
    input_tokens: Quantity = Field(description="Prompt tokens measured (the sidecar's count).")
    cost_usd: Money = Field(alias="costUSD", description="Dollars those calls cost.")
    items: list[Insight] = Field(default_factory=list, max_length=8, description="One entry per insight.")
    input_growth: InputGrowth | None = Field(default=None, description="Absent without follow-up turns.")
    outcomes: Outcomes | None = Field(default=None, description="Absent without acceptance reports.")
    consumers: list[ConsumerWaste] | None = Field(
        default=None, max_length=10, description="The pods and users (5 each) with the most repeated-context and "
        "retry dollars.")


__all__ = ["ACCEPTED_HEADER", "CACHE_MIN_TOKENS", "CONVERSATION_HEADER", "RETRY_HEADER", "WINDOW_HOURS",
           "ConsumerWaste", "InputGrowth", "Insight", "InsightName", "InsightThresholds", "InsightsSpec",
           "InsightsStatus", "Outcomes"]
