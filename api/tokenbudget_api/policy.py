"""The operator -> sidecar contract: one pod's effective policy.

The operator computes it from every TokenBudget and ThinkTier that selects the pod and PUTs it to the
sidecar's admin port; in standalone mode (no Kubernetes) the sidecar reads the same document from a
YAML or JSON file. The version lets the sidecar answer "already applied" to a repeated push.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from tokenbudget_api.common import ApiModel, Money, Name
from tokenbudget_api.thinktier import ThinkTierSpec
from tokenbudget_api.tokenbudget import (
    HTTP_URL_PATTERN,
    Dialect,
    FailMode,
    ModelPrice,
    OnDisconnect,
    TokenBudgetSpec,
)

PUBLIC_ENDPOINTS: dict[Dialect, str] = {
    Dialect.OPENAI: "https://api.openai.com",
    Dialect.ANTHROPIC: "https://api.anthropic.com",
    Dialect.GEMINI: "https://generativelanguage.googleapis.com",
}


class PolicyUpstream(ApiModel):
    """A provider as the sidecar sees it; the key, if any, is a file mounted into the sidecar only."""

    name: Name = Field(description="Path prefix on the sidecar's data port.")
    base_url: str = Field(alias="baseURL", pattern=HTTP_URL_PATTERN, description="Provider base URL.")
    dialect: Dialect = Field(description="Wire format.")
    api_key_file: str | None = Field(default=None, description="File holding the key to inject.")
    api_key_secret: str | None = Field(
        default=None, description="The Secret the key file comes from (apiKeySecretRef.name), so that an answer "
        "about a missing or unreadable key can name it; never the key itself.")
    deployments: dict[str, str] | None = Field(
        default=None, description="AzureOpenAI: deployment name -> the model it serves (for prices).")


def default_upstreams() -> list[PolicyUpstream]:
    return [
        PolicyUpstream(name=d.value.lower(), base_url=url, dialect=d) for d, url in PUBLIC_ENDPOINTS.items()
    ]


class KeyUse(ApiModel):
    """One user's or model's use of a per-key window at a lease round: the fleet's, and this pod's part."""

    fleet: Money = Field(description="What every pod together had consumed of this key.")
    own: Money = Field(description="This pod's part of it.")


class Lease(ApiModel):
    """A slice of a shared window granted to one sidecar (Doorman-style).

    Calendar window: `granted` is what the sidecar may have admitted by the end of the period starting at
    `period_start`. Rolling window (`period_start` None): a level, what the sidecar's use inside the
    sliding window may reach at any moment. Per-User/per-Model window: a lease without `key` applies to
    every key separately (each user may spend `granted` through this pod), so N pods hold N grants per
    key whatever the number of keys; the operator keeps their sum within the limit.
    """

    window: str = Field(description="Limit name within the budget.")
    key: str | None = Field(default=None, description="One user or model; none = the whole window, or every key.")
    granted: Money = Field(description="Amount this sidecar may admit, in the window's unit.")
    period_start: dt.datetime | None = Field(
        default=None, description="Start of the calendar period the grant is for; none for a rolling window.")
    expires_at: dt.datetime = Field(description="After this, failMode applies until renewed.")
    fleet_used: Money | None = Field(
        default=None, description="What every pod together had consumed in this window at the lease round, this "
        "pod included (a per-key window: the sum of each pod's fullest key). The sidecar's percent, stage and "
        "remaining are this plus what it consumed since, over the budget's limit; none: it knows only itself.")
    own_used: Money | None = Field(default=None, description="This pod's part of fleet_used.")
    key_used: dict[str, KeyUse] | None = Field(default=None, description=(
        "A per-User/per-Model window's lease: the keys whose fleet use reached half the ladder's lowest step (at "
        "most 200, fullest first), each with what the fleet and this pod had consumed of it. A key's percent is "
        "its fleet figure plus what this pod consumed since; an unlisted key's is this pod's own use, which is "
        "below half the lowest step too, so its stage is the same."))


class BudgetPolicy(ApiModel):
    """One TokenBudget that selects the pod."""

    namespace: str = Field(default="default", description="Budget namespace.")
    name: str = Field(description="Budget name.")
    generation: int = Field(default=0, ge=0, description="metadata.generation pushed.")
    spec: TokenBudgetSpec = Field(description="The budget's spec.")
    leases: list[Lease] | None = Field(default=None, description="Grants for shared windows; none = local.")
    pods: int | None = Field(default=None, ge=1, description=(
        "How many pods the budget selects, as the operator counts them, when its ladder has a Throttle step: "
        "each sidecar keeps to maxRequestsPerMinute / pods, so the fleet together keeps to the budget's rate. "
        "None: this sidecar alone keeps to the whole rate."))

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ThinkTierPolicy(ApiModel):
    """One ThinkTier that selects the pod, and which of its Required tiers this pod may use."""

    namespace: str = Field(default="default", description="ThinkTier namespace.")
    name: str = Field(description="ThinkTier name.")
    generation: int = Field(default=0, ge=0, description="metadata.generation pushed.")
    spec: ThinkTierSpec = Field(description="The ThinkTier's spec.")
    authorized_tiers: list[str] = Field(
        default_factory=list, description="Required tiers the pod's annotation authorizes."
    )
    applied_budgets: dict[str, int] | None = Field(
        default=None, description="autoApply: class name -> the thinking budget to use instead of its tier's "
        "(spec untouched); none: the declared tiers.")


class SidecarPolicy(ApiModel):
    """Everything one sidecar enforces."""

    version: str = Field(default="", description="Opaque; derived from generations and content if empty.")
    upstreams: list[PolicyUpstream] = Field(default_factory=default_upstreams, description="Providers.")
    budgets: list[BudgetPolicy] = Field(default_factory=list, description="Budgets selecting the pod.")
    think_tiers: list[ThinkTierPolicy] = Field(default_factory=list, description="ThinkTiers selecting the pod.")
    prices: list[ModelPrice] = Field(default_factory=list, description="Price overrides (all budgets merged).")
    on_disconnect: OnDisconnect = Field(default=OnDisconnect.DRAIN, description="Client hang-up handling.")
    fail_mode: FailMode = Field(default=FailMode.CLOSED, description="When leases cannot be renewed.")

    @model_validator(mode="after")
    def _fill_version(self) -> SidecarPolicy:
        names = [u.name for u in self.upstreams]
        if len(names) != len(set(names)):
            raise ValueError("upstream names must be unique")
        if not self.version:
            body = self.model_dump(mode="json", by_alias=True, exclude={"version"})
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            self.version = f"sha256-{digest}"
        return self

    def upstream(self, name: str) -> PolicyUpstream | None:
        return next((u for u in self.upstreams if u.name == name), None)

    @classmethod
    def load(cls, path: Path) -> SidecarPolicy:
        """Read a standalone policy file (YAML or JSON; JSON is YAML)."""
        return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
