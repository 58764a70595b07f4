"""The ThinkTier API: thinking budgets for reasoning calls, sized by query class and learned from use.

Classes match on trusted inputs only (a header the app's code sets, the path, the model, the prompt
size), never on prompt text, so a user cannot talk a call into a bigger tier.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from tokenbudget_api import names
from tokenbudget_api.common import CEL, ApiModel, Condition, LabelSelector, Name, Percent, cel
from tokenbudget_api.tokenbudget import DURATION_PATTERN, HEADER_NAME_PATTERN

ANTHROPIC_MIN_THINKING = 1024
# The largest thinking budgets providers take as a number (published limits): Claude's largest max_tokens
# (Opus 4.6 and later; budget_tokens must stay below it) and Gemini 2.5 Pro's thinkingBudget. Shared by the
# sidecar, which fits budgets into them, and the operator, which reports a tier above both.
ANTHROPIC_MAX_OUTPUT = 128_000
GEMINI_MAX_THINKING = 32_768


class Authorization(StrEnum):
    NOT_REQUIRED = "NotRequired"
    REQUIRED = "Required"


class AutoApply(StrEnum):
    DISABLED = "Disabled"
    ENABLED = "Enabled"


class Tier(ApiModel):
    """A named thinking budget."""

    name: Name = Field(description="Tier name, e.g. shallow, standard, deep, max.")
    budget_tokens: int = Field(
        ge=ANTHROPIC_MIN_THINKING, le=200_000,
        description="Thinking tokens allowed per call (at least 1024, Anthropic's minimum).",
    )
    authorization: Authorization = Field(
        default=Authorization.NOT_REQUIRED,
        description="Required: only pods authorized by annotation get this tier; others get the default.",
    )


class ClassMatch(ApiModel):
    """Trusted request properties a class matches on; every field set must match."""

    header_values: list[str] | None = Field(
        default=None, max_length=64, description="Values of the class header (spec.classHeader) that match."
    )
    path_prefix: str | None = Field(default=None, max_length=256, description="Request path prefix on the sidecar.")
    models: list[str] | None = Field(
        default=None, max_length=64, description="Model ids, shell-style wildcards allowed."
    )
    min_prompt_tokens: int | None = Field(default=None, ge=0, le=10_000_000, description="Smallest prompt.")
    max_prompt_tokens: int | None = Field(default=None, ge=0, le=10_000_000, description="Largest prompt.")


class QueryClass(ApiModel):
    """A class of queries and the tier it gets; the first matching class wins."""

    name: Name = Field(description="Class name, reported in status and metrics.")
    tier: Name = Field(description="Name of the tier this class gets.")
    match: ClassMatch = Field(description="What a call must look like to be in this class.")


class EffortThresholds(ApiModel):
    """How a budget maps onto OpenAI's reasoning_effort, which has levels instead of token counts."""

    model_config = {"json_schema_extra": {CEL: [
        cel("self.lowUpTo < self.mediumUpTo", "lowUpTo must be below mediumUpTo"),
    ]}}

    low_up_to: int = Field(default=4096, ge=1, le=200_000, description="Budgets up to this are effort low.")
    medium_up_to: int = Field(default=16384, ge=1, le=200_000, description="Budgets up to this are medium; "
                              "larger ones high.")

    @model_validator(mode="after")
    def _ordered(self) -> EffortThresholds:
        if self.low_up_to >= self.medium_up_to:
            raise ValueError("lowUpTo must be below mediumUpTo")
        return self


class Calibration(ApiModel):
    """How recommendations are learned from observed thinking tokens."""

    model_config = {"json_schema_extra": {CEL: [
        cel("!has(self.minBudgetTokens) || !has(self.maxBudgetTokens) || self.minBudgetTokens <= "
            "self.maxBudgetTokens", "minBudgetTokens must not exceed maxBudgetTokens", ".minBudgetTokens"),
    ]}}

    percentile: int = Field(default=98, ge=50, le=99, description="Percentile of observed use to size for (98: "
                            "with 20% headroom it truncated 0.4-1% of spread-out classes where P95 truncated "
                            "2.7%; benchmarks/thinktier_savings.py).")
    headroom_percent: int = Field(default=20, ge=0, le=200, description="Added on top of the percentile.")
    min_samples: int = Field(default=100, ge=1, le=1_000_000, description="Samples before recommending.")
    truncation_alert_percent: Percent = Field(default=2, description="Alert when a class truncates more often.")
    under_use_alert_percent: Percent = Field(default=50, description="Alert when median under-use exceeds this.")
    auto_apply: AutoApply = Field(
        default=AutoApply.DISABLED, description="Enabled: the operator applies each class's recommendation to the "
        "sidecars' policy (never to this spec), within minBudgetTokens..maxBudgetTokens, at most maxStepPercent "
        "per stepInterval and only with minSamples; status shows declared and applied budgets. Disabled (the "
        "default, and the rollback): the declared tiers apply and recommendations are only reported.")
    min_budget_tokens: int | None = Field(
        default=None, ge=ANTHROPIC_MIN_THINKING, le=200_000,
        description="autoApply never goes below this (default 1024, Anthropic's minimum).")
    max_budget_tokens: int | None = Field(
        default=None, ge=ANTHROPIC_MIN_THINKING, le=200_000,
        description="autoApply never goes above this (default: the budget the class's tier declares, so "
        "applying only ever saves; raise it to let a truncating class grow past its tier).")
    max_step_percent: int = Field(default=25, ge=1, le=100, description="autoApply moves a class's budget by "
                                  "at most this share of its current value per stepInterval.")
    step_interval: str = Field(default="1h", pattern=DURATION_PATTERN, max_length=8,
                               description="autoApply moves a class at most once per this duration, e.g. 1h, 30m.")

    @model_validator(mode="after")
    def _bounds(self) -> Calibration:
        if (self.min_budget_tokens is not None and self.max_budget_tokens is not None
                and self.min_budget_tokens > self.max_budget_tokens):
            raise ValueError("minBudgetTokens must not exceed maxBudgetTokens")
        return self

    @property
    def step_seconds(self) -> int:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[self.step_interval[-1]]
        return int(self.step_interval[:-1]) * unit


class ThinkTierSpec(ApiModel):
    """Tiers, the classes that map calls onto them, and how to learn better tiers."""

    model_config = {"json_schema_extra": {CEL: [
        cel("self.tiers.exists(t, t.name == self.defaultTier)", "defaultTier must name a tier", ".defaultTier"),
        cel("self.tiers.exists(t, t.name == self.defaultTier && t.authorization != 'Required')",
            "defaultTier must not require authorization", ".defaultTier"),
        cel("!has(self.classes) || self.classes.all(c, self.tiers.exists(t, t.name == c.tier))",
            "every class must name a tier", ".classes"),
    ]}}

    selector: LabelSelector = Field(description="Pods (in this namespace) the tiers apply to.")
    class_header: str = Field(
        default=names.CLASS_HEADER, pattern=HEADER_NAME_PATTERN,
        description="Request header the app's code sets to name a call's class.",
    )
    tiers: list[Tier] = Field(
        min_length=1, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="The thinking budgets on offer.",
    )
    classes: list[QueryClass] | None = Field(
        default=None, max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Query classes in order; unmatched calls get defaultTier and count as unclassified.",
    )
    default_tier: Name = Field(description="Tier for calls no class matches.")
    openai_effort: EffortThresholds = Field(
        alias="openAIEffort",
        default_factory=EffortThresholds, description="Budget thresholds for OpenAI reasoning_effort."
    )
    calibration: Calibration = Field(default_factory=Calibration, description="Recommendation settings.")

    @model_validator(mode="after")
    def _references(self) -> ThinkTierSpec:
        tiers = {t.name: t for t in self.tiers}
        if len(tiers) != len(self.tiers):
            raise ValueError("tier names must be unique")
        if self.default_tier not in tiers:
            raise ValueError("defaultTier must name a tier")
        if tiers[self.default_tier].authorization is Authorization.REQUIRED:
            raise ValueError("defaultTier must not require authorization")
        for c in self.classes or []:
            if c.tier not in tiers:
                raise ValueError(f"class {c.name} names unknown tier {c.tier}")
        return self


class ClassStatus(ApiModel):
    """Observed thinking use of one class."""

    name: str = Field(description="Class name (or 'unclassified').")
    tier: str = Field(description="Tier in force.")
    budget_tokens: int = Field(ge=0, description="Budget of that tier.")
    samples: int = Field(ge=0, description="Calls observed.")
    p50: int | None = Field(default=None, ge=0, description="Median thinking tokens.")
    p95: int | None = Field(default=None, ge=0, description="95th percentile thinking tokens.")
    p99: int | None = Field(default=None, ge=0, description="99th percentile thinking tokens.")
    truncation_percent: str | None = Field(default=None, description="Share of calls truncated, in percent.")
    thinking_only_truncations: int | None = Field(
        default=None, ge=0, description="Truncations where thinking ate the whole answer."
    )
    under_use_percent: str | None = Field(default=None, description="(budget - P50 use) / budget, in percent.")
    recommended_budget_tokens: int | None = Field(
        default=None, ge=0, description="Percentile x (1 + headroom), rounded to a provider-valid value."
    )
    declared_budget_tokens: int | None = Field(
        default=None, ge=0, description="The budget the spec's tier gives the class (autoApply only).")
    applied_budget_tokens: int | None = Field(
        default=None, ge=0, description="The budget autoApply pushed to the sidecars (budgetTokens is in force).")
    applied_reason: str | None = Field(
        default=None, description="Why the applied budget is what it is: Applied, StepLimited, BoundedByMinBudget, "
        "BoundedByMaxBudget, NotEnoughSamples, WaitingForStepInterval.")
    applied_at: dt.datetime | None = Field(default=None, description="When autoApply last moved the budget.")


class ThinkTierStatus(ApiModel):
    """Per-class measurements and recommendations, written by the operator."""

    observed_generation: int | None = Field(default=None, ge=0, description="Generation last acted on.")
    conditions: list[Condition] | None = Field(
        default=None, max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Synced, TruncationHigh, UnderUsed.",
    )
    classes: list[ClassStatus] | None = Field(default=None, max_length=65, description="Per-class figures.")
    unclassified_percent: str | None = Field(default=None, description="Share of calls no class matched.")
    last_updated: dt.datetime | None = Field(default=None, description="When status was last written.")


class ThinkTier(ApiModel):
    """Thinking budgets for reasoning-model calls, sized by query class."""

    api_version: str = Field(default=names.API_VERSION, description="tokenbudget.io/v1alpha1")
    kind: str = Field(default=names.THINKTIER_KIND, description="ThinkTier")
    metadata: dict[str, object] = Field(default_factory=dict, description="Standard object metadata.")
    spec: ThinkTierSpec = Field(description="Tiers and classes.")
    status: ThinkTierStatus | None = Field(default=None, description="What the operator observed.")


THINK_TIER_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Default", "type": "string", "jsonPath": ".spec.defaultTier", "description": "Tier for unmatched"},
    {"name": "Unclassified%", "type": "string", "jsonPath": ".status.unclassifiedPercent"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
