"""Notifications of a TokenBudget: where they go (spec), what was delivered (status), what a receiver gets (payload).

A budget names targets in `spec.notifications`; the operator POSTs to each target's webhook URL, read from
the key `urlSecretKey` of the Secret `tokenbudget-notifications` in the budget's namespace. One fixed Secret
name per namespace because a webhook URL is a credential (a Slack incoming-webhook URL lets anyone post),
and the operator's RBAC can then grant `get` on that one name instead of on every Secret in the cluster.

Two payload formats: `Slack` (Slack's incoming-webhook body, `{"text": ..., "blocks": [...]}`, which Slack,
Mattermost, Rocket.Chat and Teams' Slack-compatible connectors accept) and `Json` (`NotificationPayload`
below, documented field by field, for anything else). Every POST carries the same `idempotencyKey` in the
`Idempotency-Key` header (and, in Json, in the body): delivery is at least once, and a retry or a resend after
an operator crash repeats the key, so a receiver can drop what it already has.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from tokenbudget_api.common import ApiModel, Money, Name


class NotificationFormat(StrEnum):
    SLACK = "Slack"
    JSON = "Json"


class NotificationEvent(StrEnum):
    STAGE_CHANGED = "StageChanged"  # the budget's ladder stage moved (Normal, Alert, Throttle, Downgrade, Block)
    PERIOD_ENDED = "PeriodEnded"  # a calendar window rolled over: what the period that ended spent


class NotificationTarget(ApiModel):
    """One place the operator sends this budget's stage changes and end-of-period summaries to."""

    name: Name = Field(description="Unique name of the target within the budget, e.g. team-slack.")
    url_secret_key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the Secret tokenbudget-notifications (in the budget's namespace) whose value is the "
        "webhook URL (http or https).",
    )
    format: NotificationFormat = Field(
        default=NotificationFormat.SLACK,
        description="Slack (a Slack incoming-webhook body: text and blocks) or Json (the generic payload "
        "documented in the README).",
    )
    events: list[NotificationEvent] | None = Field(
        default=None, max_length=2,
        description="Which events to send: StageChanged, PeriodEnded (end-of-period summaries of calendar "
        "windows). Unset: both.",
    )

    def wants(self, event: NotificationEvent) -> bool:
        return self.events is None or event in self.events


class SummarizedPeriod(ApiModel):
    """The last period of one calendar window whose summary a target has received."""

    window: str = Field(description="The limit's name.")
    period_start: dt.datetime = Field(description="Start of the period summarized.")


class NotificationStatus(ApiModel):
    """What one target has been sent; the operator's dedupe record, kept across its restarts and replicas."""

    name: str = Field(description="The target's name.")
    stage: str | None = Field(default=None, description="The last ladder stage delivered to this target.")
    sequence: int = Field(default=0, ge=0, description="Stage messages delivered so far (part of their keys).")
    periods: list[SummarizedPeriod] | None = Field(
        default=None, max_length=32, description="Per calendar window, the last period summarized.")
    last_delivered: dt.datetime | None = Field(default=None, description="When a message last got through.")
    failing_since: dt.datetime | None = Field(
        default=None, description="Set while messages to this target fail (retries exhausted or no URL).")


# ----- what a receiver gets (format Json) -------------------------------------------------------------------


class BudgetRef(ApiModel):
    namespace: str = Field(description="The TokenBudget's namespace.")
    name: str = Field(description="The TokenBudget's name.")
    uid: str = Field(description="Its metadata.uid (a budget deleted and re-created gets a new one).")


class StageChange(ApiModel):
    previous: str = Field(alias="from", description="Stage before: Normal, Alert, Throttle, Downgrade or Block.")
    current: str = Field(alias="to", description="Stage now.")
    window: str | None = Field(default=None, description="The fullest window, which decides the stage.")
    used_percent: int | None = Field(default=None, ge=0, le=100, description="Its percent used.")


class PeriodSummary(ApiModel):
    window: str = Field(description="The calendar window that rolled over.")
    key: str | None = Field(default=None, description="For a per-User/per-Model window: its fullest key.")
    unit: str = Field(description="The limit's unit: Tokens, USD or Requests.")
    period_start: dt.datetime = Field(description="Start of the period that ended.")
    period_end: dt.datetime = Field(description="Its end (the start of the current period).")
    used: str = Field(description="Used in that period, in the unit (the fullest key's for a per-key window).")
    limit: str = Field(description="The limit, in the unit.")
    percent: int = Field(ge=0, le=100, description="used / limit, rounded down, capped at 100.")
    tokens: int = Field(ge=0, description="Tokens of every call counted in the period (all keys).")
    cost_usd: Money = Field(alias="costUSD", description="Dollars of those calls.")
    requests: int = Field(ge=0, description="Number of those calls.")


class NotificationPayload(ApiModel):
    """The body of a `Json` notification (POSTed as application/json, `Idempotency-Key` header set)."""

    idempotency_key: str = Field(description="The same on every retry and resend of this message.")
    event: NotificationEvent = Field(description="StageChanged or PeriodEnded.")
    budget: BudgetRef = Field(description="Which TokenBudget.")
    target: str = Field(description="The target's name in spec.notifications.")
    enforcement: str = Field(description="Enforce or DryRun (a DryRun budget's stage changes nothing).")
    time: dt.datetime = Field(description="When the operator observed the event.")
    text: str = Field(description="One line for people, as the Slack format shows it.")
    stage: StageChange | None = Field(default=None, description="For StageChanged.")
    summary: PeriodSummary | None = Field(default=None, description="For PeriodEnded.")


__all__ = [
    "BudgetRef",
    "NotificationEvent",
    "NotificationFormat",
    "NotificationPayload",
    "NotificationStatus",
    "NotificationTarget",
    "PeriodSummary",
    "StageChange",
    "SummarizedPeriod",
]
