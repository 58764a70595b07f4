"""The sidecar's admin API answers: the other half of the operator ↔ sidecar wire (`policy.py` is the push).

The sidecar builds each answer as one of these models and serializes it; the operator's client validates
every answer into the same model, so neither side reads the other's JSON by string key, and a field renamed
on one side fails in the other's type check instead of reading None in production. `openapi.py` turns these
models into the checked-in OpenAPI document (`api/openapi/admin.yaml`) that tools and fuzzers read.

Amounts are decimal strings (tokens, dollars or requests, in the window's unit): exact, never floats.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema

from tokenbudget_api.common import ApiModel
from tokenbudget_api.thinktier import ClassStatus
from tokenbudget_api.tokenbudget import Enforcement, Stage
from tokenbudget_api.usage import UsageRecord


def _to_amount(value: object) -> object:
    if isinstance(value, float):
        raise ValueError("amounts are decimal strings, not floats")
    return Decimal(value) if isinstance(value, str | int) else value


Amount = Annotated[
    Decimal,
    BeforeValidator(_to_amount),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}),
]
"""A quantity in a window's unit (tokens, US dollars or requests) as a decimal string."""


class AdminError(ApiModel):
    """Every 4xx the admin port answers (400 bad query or body, 401 token, 422 invalid policy)."""

    error: str = Field(description="What was wrong, for a person.")
    details: list[dict[str, Any]] | None = Field(default=None, description="pydantic's errors, for a 422.")


class Health(ApiModel):
    """GET /healthz: the process answers."""

    status: str = "ok"


class Readiness(ApiModel):
    """GET /readyz: 200 once the upstream client session is open and, in an injected pod, the operator's first
    policy push has arrived (or TOKENBUDGET_AWAIT_POLICY_S passed without one), else 503."""

    ready: bool
    policy_version: str | None = Field(default=None, description="Version of the policy in force.")
    detail: list[str] = Field(default_factory=list, description=(
        "What works in a degraded way without making the sidecar unready, e.g. a tiktoken encoding that "
        "could not be loaded (prompts are then counted by their UTF-8 byte size, an over-estimate)."))


class PolicyApplied(ApiModel):
    """PUT /policy: the version in force afterwards; the same version twice changes nothing."""

    applied: str
    changed: bool


class UsagePage(ApiModel):
    """GET /usage?after=&limit=: records with seq > after (fsynced ones only, in seq order)."""

    records: list[UsageRecord]
    cursor: int = Field(ge=0, description="Resume from here: the last record's seq, or the acknowledged cursor.")
    last_seq: int = Field(ge=0, description="The log's end; below the operator's cursor, the sidecar lost its log.")
    policy_version: str | None = Field(
        default=None,
        description="Version in force: a restarted sidecar runs its startup policy, so the operator re-pushes.")


class UsageAck(ApiModel):
    """POST /usage/ack body: the operator has persisted every record up to `cursor`."""

    cursor: int = Field(ge=0)


class UsageAcked(ApiModel):
    """POST /usage/ack answer."""

    acked: int
    remaining: int = Field(description="Records still unacknowledged.")


class LeaseReport(ApiModel):
    """The grant a leased window admits against, as the sidecar holds it now."""

    granted: Amount
    remaining: Amount = Field(description="Room left under the grant, never negative.")
    low: bool = Field(description="Less than a fifth of the grant left: asks the operator for more.")
    expires_at: dt.datetime


class WindowReport(ApiModel):
    """One window (one key of a per-key limit) of one budget."""

    name: str = Field(description="The limit's name.")
    key: str | None = Field(default=None, description="User or model of a per-key limit; none for a whole window.")
    unit: str = Field(description="tokens, costUSD or requests.")
    used: Amount = Field(description="Settled use in the current period or rolling window.")
    reserved: Amount = Field(description="Held by calls in flight.")
    limit: Amount = Field(description="What this sidecar admits against: its lease when leased, else the limit.")
    percent: int = Field(ge=0, description="The budget's percent used, fleet-wide when leased (the last lease "
                         "round's fleet figure plus this pod's use since), in whole percent: what the ladder reads.")
    period_start: dt.datetime
    resets_at: dt.datetime | None = Field(default=None, description="None for a rolling window.")
    lease: LeaseReport | None = None
    keys: int | None = Field(default=None, description="With ?keys=fullest: how many keys the limit has.")


class WouldHave(ApiModel):
    """A DryRun budget's count of one decision it would have made."""

    count: int = 0
    tokens: int = 0
    cost_usd: Amount = Field(default=Decimal(0), alias="costUSD")


class BudgetReport(ApiModel):
    """One budget as this sidecar accounts it."""

    name: str = Field(description="namespace/name of the TokenBudget.")
    generation: int
    stage: Stage
    enforcement: Enforcement
    windows: list[WindowReport]
    reservations: int = Field(ge=0, description="Calls in flight holding room.")
    would_have: dict[str, WouldHave] = Field(default_factory=dict, description="DryRun: action → counts.")


class AlertReport(ApiModel):
    """A ladder step reached, for the operator's Events (cursor: `seq`)."""

    seq: int
    budget: str
    window: str
    stage: Stage
    percent: int
    time: dt.datetime


class BudgetsAnswer(ApiModel):
    """GET /budgets?alertsAfter=&keys=fullest."""

    budgets: list[BudgetReport]
    alerts: list[AlertReport] = Field(default_factory=list)


class Histogram(ApiModel):
    """A log-spaced quantile sketch (`tokenbudget_api.sketch.LogHistogram`), mergeable across pods."""

    relative_accuracy: str
    zeros: int = 0
    count: int = 0
    min: int | None = None
    max: int | None = None
    buckets: dict[str, int] = Field(default_factory=dict, description="Bucket index → count.")


class ClassReport(ClassStatus):
    """One class's cumulative figures since the sidecar started: ClassStatus plus what merging needs."""

    calls: int = 0
    truncations: int = 0
    budget_bound_percent: str | None = None
    estimated_samples: int = 0
    thinking_off: int = 0
    not_measured: int = 0
    authorized_uses: int = 0
    authorization_denied: int = 0
    histogram: Histogram


class ReportedCondition(ApiModel):
    """A condition as the sidecar sees it; the operator adds lastTransitionTime and observedGeneration."""

    type: str
    status: str
    reason: str
    message: str


class ThinkTierReport(ApiModel):
    """One ThinkTier on one sidecar."""

    namespace: str
    name: str
    generation: int
    calls: int = 0
    unclassified: int = 0
    unclassified_percent: str | None = None
    classes: list[ClassReport] = Field(default_factory=list)
    conditions: list[ReportedCondition] = Field(default_factory=list)


class ThinkingAnswer(ApiModel):
    """GET /thinking."""

    think_tiers: list[ThinkTierReport]
    skipped: dict[str, int] = Field(default_factory=dict, description="Reasoning calls not sized, by reason.")


class DrainAnswer(ApiModel):
    """GET /drain (the preStop hook): how long it waited for the operator's last acknowledgement."""

    unacked: int
    waited_seconds: float
    operator_seen: bool


__all__ = ["AdminError", "AlertReport", "Amount", "BudgetReport", "BudgetsAnswer", "ClassReport", "DrainAnswer",
           "Health", "Histogram", "LeaseReport", "PolicyApplied", "Readiness", "ReportedCondition",
           "ThinkTierReport", "ThinkingAnswer", "UsageAck", "UsageAcked", "UsagePage", "WindowReport", "WouldHave"]
